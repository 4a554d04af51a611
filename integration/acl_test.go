// Package integration runs the shipped broker-config (mosquitto.conf and acl)
// on a real Mosquitto 2 broker and checks its effects with paho clients.
//
// Mosquitto PUBACKs a QoS 1 publish that the ACL denies and drops it, and it
// grants every SUBSCRIBE, filtering each delivery instead. So these tests
// never trust an ack: they check what subscribers receive. "Nothing arrived"
// is established with a sentinel: a permitted message published after the
// probe (after the probe's PUBACK, or after the SUBACK for retained
// messages). Mosquitto handles packets one at a time and delivers to a client
// in order, so once the sentinel arrives, anything the probe could have
// caused would already have arrived.
package integration

import (
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/mosquittotest"
)

const (
	issuer  = "ekem-issuer"
	monitor = "ekem-monitor"
	devA    = "dev-a"
	devB    = "dev-b"
)

// Further service instances (mosquittotest makes accounts for them). The
// broker binds the client id to the username, so a second connection of one
// account takes over the first: a test that keeps two issuer or monitor
// connections open uses two instances, as two real instances would.
const (
	issuer2  = "ekem-issuer-2"
	issuer3  = "ekem-issuer-3"
	monitor2 = "ekem-monitor-2"
	monitor3 = "ekem-monitor-3"
	monitor4 = "ekem-monitor-4"
)

func TestConnectRefused(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{devA}})
	a := b.Account(devA)
	cases := []struct{ name, user, password string }{
		{"anonymous", "", ""},
		{"wrong password", devA, a.Password + "x"},
		{"empty password", devA, ""},
		{"another account's password", devA, b.Issuer().Password},
		{"unknown user", "dev-unknown", a.Password},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dial(b.URL(), tc.user, tc.password, nil)
			if err == nil {
				c.Disconnect(0)
				t.Fatalf("broker accepted %s", tc.name)
			}
		})
	}
	// Positive control: the right password is accepted.
	c, err := dial(b.URL(), a.Username, a.Password, nil)
	if err != nil {
		t.Fatalf("correct password refused: %v", err)
	}
	c.Disconnect(0)
}

// A device may read only its own ticket, the epoch roots, the epoch and the
// issuer's liveness: not another device's ticket (retained or live, directly
// or through wildcards), not registrations or statuses (its own included),
// and not $SYS.
func TestDeviceReadsOnlyItsOwnTicket(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{devA, devB}})
	iss := connectAs(t, b, issuer)
	publishString(t, iss, ticketTopic(devB), "ticket-b-1", true)
	publishString(t, iss, ticketTopic(devA), "ticket-a-1", true)
	publishString(t, iss, rootTopic(1), "root-1", true)
	publishString(t, iss, topicOnline, "online", true)
	publishString(t, iss, topicIssuerKey, "key-announcement", true)
	for _, id := range []string{devA, devB} {
		d := connectAs(t, b, id)
		publishString(t, d, regTopic(id), "reg-"+id, true)
		publishString(t, d, statusTopic(id), "status-"+id, true)
		d.Disconnect(50) // the recorder below is this account's one connection
	}

	a := subscribe(t, b, devA, ticketTopic(devB), prefix+"ticket/+", "#", prefix+"#", "$SYS/#", topicEpoch)
	bRec := subscribe(t, b, devB, ticketTopic(devB))
	publishString(t, iss, topicEpoch, "sentinel-1", false)
	a.waitFor(t, topicEpoch, "sentinel-1")
	// Positive controls: what a device must be able to read, retained.
	a.waitFor(t, ticketTopic(devA), "ticket-a-1")
	a.waitFor(t, rootTopic(1), "root-1")
	a.waitFor(t, topicOnline, "online")
	bRec.waitFor(t, ticketTopic(devB), "ticket-b-1")
	// Issuer key announcements are read by every device (subscribed here
	// through prefix+"#", whose other topics it must not get).
	a.waitFor(t, topicIssuerKey, "key-announcement")

	publishString(t, iss, ticketTopic(devB), "ticket-b-2", true)
	publishString(t, iss, topicEpoch, "sentinel-2", false)
	a.waitFor(t, topicEpoch, "sentinel-2")
	bRec.waitFor(t, ticketTopic(devB), "ticket-b-2")

	allowed := map[string]bool{ticketTopic(devA): true, rootTopic(1): true, topicEpoch: true, topicOnline: true, topicIssuerKey: true}
	a.mustNotHave(t, "a device reads only its ticket, roots, epoch, issuer/online and issuer/key/+", func(m message) bool {
		return !allowed[m.Topic]
	})
}

// The issuer cannot write registrations or statuses, so it cannot pin a key
// or confirm an epoch on a device's behalf.
func TestIssuerCannotWriteDeviceTopics(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{devA}})
	mon := subscribe(t, b, monitor, prefix+"#")
	iss := connectAs(t, b, issuer)
	for _, topic := range []string{regTopic(devA), statusTopic(devA), regTopic(issuer), statusTopic(issuer), prefix + "other"} {
		publishString(t, iss, topic, probePayload, true)
	}
	publishString(t, iss, topicEpoch, "sentinel", false)
	mon.waitFor(t, topicEpoch, "sentinel")
	mon.mustNotHave(t, "the issuer wrote a device topic", payloadIs(probePayload))

	issRec := subscribe(t, b, issuer2, prefix+"reg/+", prefix+"status/+")
	a := connectAs(t, b, devA)
	publishString(t, a, regTopic(devA), "sentinel", false)
	issRec.waitFor(t, regTopic(devA), "sentinel")
	issRec.mustNotHave(t, "the issuer's forged message was retained", payloadIs(probePayload))
}

// A device cannot write another device's registration or status: the issuer
// never sees the forgery and it is not retained.
func TestDeviceCannotForgeAnotherDevice(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{devA, devB}})
	iss := subscribe(t, b, issuer, prefix+"reg/+", prefix+"status/+")
	a := connectAs(t, b, devA)
	publishString(t, a, regTopic(devB), probePayload, true)
	publishString(t, a, statusTopic(devB), probePayload, true)
	publishString(t, a, regTopic(devA), "reg-a", true)
	iss.waitFor(t, regTopic(devA), "reg-a")
	iss.mustNotHave(t, "dev-a wrote another device's topic", payloadIs(probePayload))

	fresh := subscribe(t, b, issuer2, prefix+"reg/+", prefix+"status/+")
	publishString(t, a, statusTopic(devA), "sentinel", false)
	fresh.waitFor(t, statusTopic(devA), "sentinel")
	fresh.waitFor(t, regTopic(devA), "reg-a") // positive control: own registration retained
	fresh.mustNotHave(t, "a forged message was retained", payloadIs(probePayload))
}

// A device cannot publish anything the issuer publishes, nor outside its
// own reg and status topics.
func TestDeviceCannotPublishIssuerTopics(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{devA, devB}})
	mon := subscribe(t, b, monitor, prefix+"#")
	bRec := subscribe(t, b, devB, ticketTopic(devB), prefix+"root/+", topicEpoch, topicOnline, prefix+"issuer/key/+")
	a := connectAs(t, b, devA)
	iss := connectAs(t, b, issuer)

	forged := []string{ticketTopic(devA), ticketTopic(devB), rootTopic(1), topicEpoch, topicOnline, topicIssuerKey, prefix + "other"}
	for _, topic := range forged {
		publishString(t, a, topic, probePayload, true)
	}
	publishString(t, a, statusTopic(devA), "sentinel", false)
	publishString(t, iss, topicEpoch, "sentinel", false)
	mon.waitFor(t, statusTopic(devA), "sentinel")
	mon.waitFor(t, topicEpoch, "sentinel")
	bRec.waitFor(t, topicEpoch, "sentinel")
	mon.mustNotHave(t, "a device published on an issuer topic", payloadIs(probePayload))
	bRec.mustNotHave(t, "a device published on an issuer topic", payloadIs(probePayload))

	fresh := subscribe(t, b, monitor2, prefix+"#")
	publishString(t, a, statusTopic(devA), "sentinel-2", false)
	fresh.waitFor(t, statusTopic(devA), "sentinel-2")
	fresh.mustNotHave(t, "a forged message was retained", payloadIs(probePayload))
}

// The monitor reads every retained registration, status, ticket, root, epoch
// and $SYS, and nothing it publishes reaches anyone or is retained,
// including on reg/ekem-monitor and status/ekem-monitor, which the device
// patterns would otherwise grant it.
func TestMonitorReadsAllAndWritesNothing(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{devA, devB}})
	a := connectAs(t, b, devA)
	iss := connectAs(t, b, issuer)
	retained := map[string]string{
		regTopic(devA):    "reg-a",
		statusTopic(devA): "status-a",
		ticketTopic(devA): "ticket-a",
		rootTopic(7):      "root-7",
		topicEpoch:        "epoch-7",
		topicOnline:       "online",
		topicIssuerKey:    "key-announcement",
	}
	publishString(t, a, regTopic(devA), retained[regTopic(devA)], true)
	publishString(t, a, statusTopic(devA), retained[statusTopic(devA)], true)
	for _, topic := range []string{ticketTopic(devA), rootTopic(7), topicEpoch, topicOnline, topicIssuerKey} {
		publishString(t, iss, topic, retained[topic], true)
	}

	mon := subscribe(t, b, monitor, prefix+"#", "$SYS/#")
	for topic, payload := range retained {
		mon.waitFor(t, topic, payload)
	}
	mon.waitForTopic(t, "$SYS/broker/version")

	issRec := subscribe(t, b, issuer2, prefix+"reg/+", prefix+"status/+")
	aRec := subscribe(t, b, devB, ticketTopic(devB), prefix+"root/+", topicEpoch, topicOnline)
	monConn := connectAs(t, b, monitor2)
	targets := []string{
		regTopic(devA), regTopic(monitor), statusTopic(devA), statusTopic(monitor),
		ticketTopic(devA), ticketTopic(devB), ticketTopic(monitor), rootTopic(8), topicEpoch, topicOnline, topicIssuerKey,
		prefix + "other", "$SYS/broker/forged", "elsewhere",
	}
	for _, topic := range targets {
		publishString(t, monConn, topic, probePayload, true)
	}
	publishString(t, monConn, regTopic(monitor2), probePayload, true)
	publishString(t, monConn, statusTopic(monitor2), probePayload, true)
	publishString(t, a, regTopic(devA), "sentinel", false)
	publishString(t, iss, topicEpoch, "sentinel", false)
	issRec.waitFor(t, regTopic(devA), "sentinel")
	aRec.waitFor(t, topicEpoch, "sentinel")
	mon.waitFor(t, topicEpoch, "sentinel")
	for _, r := range []*recorder{issRec, aRec, mon} {
		r.mustNotHave(t, "the monitor's publish was delivered", payloadIs(probePayload))
	}

	freshIss := subscribe(t, b, issuer3, prefix+"reg/+", prefix+"status/+")
	freshMon := subscribe(t, b, monitor3, prefix+"#")
	publishString(t, a, statusTopic(devA), "sentinel-2", false)
	freshIss.waitFor(t, statusTopic(devA), "sentinel-2")
	freshMon.waitFor(t, statusTopic(devA), "sentinel-2")
	freshIss.mustNotHave(t, "the monitor's publish was retained", payloadIs(probePayload))
	freshMon.mustNotHave(t, "the monitor's publish was retained", payloadIs(probePayload))
}

// The issuer receives the registration and status of every device, retained
// and live; it cannot read tickets (it only writes them).
func TestIssuerReadsAllDevices(t *testing.T) {
	ids := []string{"dev-1", "dev-2", "dev-3", "Dev.4", "dev_5"}
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: ids})
	iss := connectAs(t, b, issuer)
	for _, id := range ids {
		c := connectAs(t, b, id)
		publishString(t, c, regTopic(id), "reg-"+id, true)
		publishString(t, c, statusTopic(id), "status-"+id, true)
		c.Disconnect(50)
	}
	publishString(t, iss, ticketTopic(ids[0]), "ticket", true)

	rec := subscribe(t, b, issuer2, prefix+"reg/+", prefix+"status/+", prefix+"ticket/+")
	for _, id := range ids {
		rec.waitFor(t, regTopic(id), "reg-"+id)
		rec.waitFor(t, statusTopic(id), "status-"+id)
	}
	d := connectAs(t, b, ids[1])
	publishString(t, d, statusTopic(ids[1]), "live", true)
	rec.waitFor(t, statusTopic(ids[1]), "live")
	rec.mustNotHave(t, "the issuer must not read tickets", topicIs(ticketTopic(ids[0])))
}

// resyncDevices is three times the stock max_queued_messages (1000): with
// stock queue limits a fresh wildcard subscriber gets about 1000 + the
// in-flight window and the rest is dropped silently.
const resyncDevices = 3000

// A fresh wildcard subscriber receives every retained registration.
func TestFreshWildcardSubscriberGetsAllRetained(t *testing.T) {
	ids := make([]string, resyncDevices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%04d", i)
	}
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: ids})
	publishRegistrations(t, b, ids)

	iss := subscribe(t, b, issuer, prefix+"reg/+")
	mon := subscribe(t, b, monitor, prefix+"#")
	c := connectAs(t, b, ids[0])
	publishString(t, c, statusTopic(ids[0]), "sentinel", false)
	publishString(t, c, regTopic(ids[0]), "sentinel", false)
	for _, r := range []*recorder{iss, mon} {
		r.waitUntil(t, 20*time.Second, "the sentinel after the retained set", func(ms []message) bool {
			return hasMessage(ms, regTopic(ids[0]), "sentinel")
		})
		got := map[string]bool{}
		for _, m := range r.messages() {
			if m.Retained && strings.HasPrefix(m.Topic, prefix+"reg/") {
				got[m.Topic] = true
			}
		}
		if len(got) != resyncDevices {
			t.Errorf("%s received %d of %d retained registrations", r.name, len(got), resyncDevices)
		}
	}
}

// publishRegistrations makes every device publish its retained registration,
// each with its own password, a few connections at a time.
func publishRegistrations(t *testing.T, b *mosquittotest.Broker, ids []string) {
	t.Helper()
	const workers = 8
	next := make(chan string)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range next {
				if err := publishOnce(b, id); err != nil {
					errs <- err
					for range next { // drain so the producer finishes
					}
					return
				}
			}
		}()
	}
	for _, id := range ids {
		next <- id
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func publishOnce(b *mosquittotest.Broker, id string) error {
	acct, ok := b.Lookup(id)
	if !ok {
		return fmt.Errorf("no account %q", id)
	}
	c, err := dial(b.URL(), acct.Username, acct.Password, nil)
	if err != nil {
		return fmt.Errorf("connect %s: %w", id, err)
	}
	defer c.Disconnect(0)
	tok := c.Publish(regTopic(id), 1, true, []byte("reg-"+id))
	if !tok.WaitTimeout(ackTimeout) || tok.Error() != nil {
		return fmt.Errorf("publish %s: %v", id, tok.Error())
	}
	return nil
}

// Messages over the 16 KiB payload limit are dropped; over max_packet_size
// the client is disconnected.
func TestMessageSizeLimit(t *testing.T) {
	const limit = 16384 // message_size_limit in the shipped mosquitto.conf
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{devA, devB}})
	iss := subscribe(t, b, issuer, prefix+"reg/+")
	a := connectAs(t, b, devA)

	atLimit := strings.Repeat("a", limit)
	publishString(t, a, regTopic(devA), atLimit, true)
	iss.waitFor(t, regTopic(devA), atLimit) // positive control: the limit itself passes
	publishString(t, a, regTopic(devA), strings.Repeat("b", limit+1), true)
	publishString(t, a, regTopic(devA), "sentinel", true)
	iss.waitFor(t, regTopic(devA), "sentinel")
	tooBig := func(m message) bool { return len(m.Payload) > limit }
	iss.mustNotHave(t, "a payload over message_size_limit was delivered", tooBig)

	// Over max_packet_size (16640) the broker closes the connection.
	lost := make(chan struct{})
	acct := b.Account(devB)
	o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("big-" + devB).
		SetUsername(acct.Username).SetPassword(acct.Password).SetAutoReconnect(false).
		SetConnectionLostHandler(func(mqtt.Client, error) { close(lost) })
	big, err := dialOptions(o)
	if err != nil {
		t.Fatal(err)
	}
	defer big.Disconnect(0)
	big.Publish(regTopic(devB), 1, true, []byte(strings.Repeat("c", 20000))) // its token may never complete
	select {
	case <-lost:
	case <-time.After(waitTimeout):
		t.Errorf("broker kept a client that sent a 20000-byte packet")
	}
	other := connectAs(t, b, devA)
	publishString(t, other, regTopic(devA), "sentinel-2", true)
	iss.waitFor(t, regTopic(devA), "sentinel-2")
	iss.mustNotHave(t, "an oversized packet was delivered", tooBig)
}

// On the TLS listener the client certificate's CN is the username, whatever
// username the client sends; a client without a certificate from the CA is
// refused.
func TestTLSIdentityIsUsername(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{devA, devB}, TLS: true})
	iss := subscribe(t, b, issuer, prefix+"reg/+")
	bRec := subscribe(t, b, devB, ticketTopic(devB), topicEpoch)

	a, err := dial(b.TLSURL(), "", "", b.ClientTLS(devA))
	if err != nil {
		t.Fatalf("TLS connect with dev-a's certificate: %v", err)
	}
	defer a.Disconnect(0)
	publishString(t, a, regTopic(devB), probePayload, true)
	publishString(t, a, regTopic(devA), "tls-reg-a", true)
	iss.waitFor(t, regTopic(devA), "tls-reg-a")
	iss.mustNotHave(t, "certificate CN=dev-a wrote reg/dev-b", payloadIs(probePayload))

	// dev-a's certificate with the issuer's username and password is still dev-a.
	issAcct := b.Issuer()
	// (Mosquitto 2.0.11 accepts the connection as user dev-a; refusing it
	// would be safe too, but then there is nothing to check.)
	spoof, err := dial(b.TLSURL(), issAcct.Username, issAcct.Password, b.ClientTLS(devA))
	if err == nil {
		defer spoof.Disconnect(0)
		publishString(t, spoof, ticketTopic(devB), probePayload, true)
	} else {
		t.Logf("TLS connect with dev-a's certificate and the issuer's password refused: %v", err)
	}
	tlsIss, err := dial(b.TLSURL(), "", "", b.ClientTLS(issuer))
	if err != nil {
		t.Fatalf("TLS connect with the issuer's certificate: %v", err)
	}
	defer tlsIss.Disconnect(0)
	publishString(t, tlsIss, ticketTopic(devB), "tls-ticket-b", true)
	bRec.waitFor(t, ticketTopic(devB), "tls-ticket-b") // positive control
	bRec.mustNotHave(t, "certificate CN=dev-a wrote a ticket", payloadIs(probePayload))

	t.Run("no client certificate", func(t *testing.T) {
		a := b.Account(devA)
		if c, err := dial(b.TLSURL(), a.Username, a.Password, b.ClientTLS("")); err == nil {
			c.Disconnect(0)
			t.Fatal("TLS listener accepted a client without a certificate")
		}
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		cfg := foreignClientTLS(t, b, devA)
		if c, err := dial(b.TLSURL(), "", "", cfg); err == nil {
			c.Disconnect(0)
			t.Fatal("TLS listener accepted a certificate from another CA")
		}
	})
}

// foreignClientTLS presents a certificate with CN=name from a CA the broker
// does not trust.
func foreignClientTLS(t *testing.T, b *mosquittotest.Broker, name string) *tls.Config {
	t.Helper()
	ca, err := creds.NewCA("foreign CA")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.IssueClient(name)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := b.ClientTLS("")
	cfg.Certificates = []tls.Certificate{cert}
	return cfg
}

// Retained messages survive a clean broker restart (persistence true).
func TestRetainedSurvivesRestart(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.Options{Devices: []string{devA}})
	iss, err := dial(b.URL(), issuer, b.Issuer().Password, nil)
	if err != nil {
		t.Fatal(err)
	}
	publishString(t, iss, ticketTopic(devA), "ticket-before-restart", true)
	iss.Disconnect(50)
	if err := b.Stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	b.Restart()
	a := subscribe(t, b, devA, ticketTopic(devA))
	a.waitFor(t, ticketTopic(devA), "ticket-before-restart")
}
