package integration

import (
	"testing"

	"github.com/entropykem/entropykem/internal/mosquittotest"
)

// The demo's trees (ekemctl demo -broker: ekem-demo/<random>/...) give the
// accounts the same rights as ekem/v1 and nothing more: a device writes
// only its own registration and status there and reads only its own
// ticket; no account can forge another's topics or the issuer's; and
// nothing written there reaches a fleet's subscribers under ekem/v1.
func TestDemoTreeACL(t *testing.T) {
	const demo = "ekem-demo/0123456789abcdef/"
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{devA, devB}})
	// The recorders use second instances' accounts: the broker binds the
	// client id to the username, so a second connection of ekem-issuer or
	// ekem-monitor would take over the one below.
	fleet := subscribe(t, b, monitor2, prefix+"#")
	iss := subscribe(t, b, issuer2, demo+"reg/+", demo+"status/+")
	bRec := subscribe(t, b, devB, demo+"#")
	a := connectAs(t, b, devA)
	mon := connectAs(t, b, monitor)
	issC := connectAs(t, b, issuer)

	// Forgeries: another device's topics, the issuer's topics, the service
	// accounts' own reg/status (the device patterns would grant them).
	for _, topic := range []string{demo + "reg/" + devB, demo + "status/" + devB, demo + "ticket/" + devB, demo + "root/1",
		demo + "epoch", demo + "issuer/online"} {
		publishString(t, a, topic, probePayload, true)
	}
	publishString(t, mon, demo+"reg/"+monitor, probePayload, true)
	publishString(t, mon, demo+"ticket/"+devB, probePayload, true)
	publishString(t, issC, demo+"reg/"+issuer, probePayload, true)
	publishString(t, issC, demo+"status/"+devA, probePayload, true)

	// What is allowed arrives: dev-a's own registration at the issuer, the
	// issuer's ticket and epoch at dev-b.
	publishString(t, a, demo+"reg/"+devA, "reg-a", true)
	publishString(t, issC, demo+"ticket/"+devB, "ticket-b", true)
	publishString(t, issC, demo+"ticket/"+devA, "ticket-a", true)
	publishString(t, issC, demo+"epoch", "sentinel", false)
	iss.waitFor(t, demo+"reg/"+devA, "reg-a")
	bRec.waitFor(t, demo+"ticket/"+devB, "ticket-b")
	bRec.waitFor(t, demo+"epoch", "sentinel")
	iss.mustNotHave(t, "a forged demo registration or status reached the issuer", payloadIs(probePayload))
	bRec.mustNotHave(t, "dev-b read a forgery or another device's ticket in the demo tree", func(m message) bool {
		return m.Payload == probePayload || m.Topic == demo+"ticket/"+devA
	})

	// Nothing of the demo reaches the fleet's tree.
	publishString(t, issC, topicEpoch, "fleet-sentinel", false)
	fleet.waitFor(t, topicEpoch, "fleet-sentinel")
	fleet.mustNotHave(t, "a demo message reached ekem/v1", func(m message) bool { return m.Topic != topicEpoch })
}
