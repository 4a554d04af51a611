package device

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/testbroker"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/wire"
)

// runAgent runs e.a until the returned stop is called.
func runAgent(t *testing.T, e *env) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	a := e.a
	go func() { done <- a.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

// TestAgentOverMQTT runs an agent against an embedded broker with the
// issuer played by pkg/batch and a plain MQTT client.
func TestAgentOverMQTT(t *testing.T) {
	url := testbroker.Start(t)
	e := newEnv(t, func(c *Config) { c.Broker = url; c.Password = "pw"; c.Timeout = 5 * time.Second })
	iss := testbroker.Dial(t, url, "ekem-issuer", topics.AllRegistrations(), topics.AllStatuses())
	stop := runAgent(t, e)

	// Registration: retained, decodes, carries the state's key.
	regBytes := iss.Wait(topics.Registration(devID), 1)
	if !bytes.Equal(regBytes, e.a.Registration()) {
		t.Fatal("published registration differs from the stored one")
	}
	reg, err := wire.ParseRegistration(regBytes)
	if err != nil || reg.DeviceID != devID || reg.KEMAlg != kem.MLKEM768 {
		t.Fatalf("registration %+v %v", reg, err)
	}
	late := testbroker.Dial(t, url, "late", topics.Registration(devID))
	if !bytes.Equal(late.Wait(topics.Registration(devID), 1), regBytes) {
		t.Fatal("registration not retained")
	}

	// Epoch 1 to the registered key.
	iss1, ep1 := e.is.issue(1, e.clock.Now(), regDevice(t, regBytes))
	iss.Put(topics.Root(1), ep1.Root)
	iss.Put(topics.Ticket(devID), iss1.Ticket)
	s1, err := wire.ParseStatus(iss.Wait(topics.Status(devID), 1))
	if err != nil || s1.Epoch != 1 || s1.State != wire.StateOK || s1.Seq != 1 {
		t.Fatalf("status 1 %+v %v", s1, err)
	}
	// Epoch 2 to the announced key; ticket before root.
	iss2, ep2 := e.is.issue(2, e.clock.Now(), nextDevice(t, s1, iss1))
	iss.Put(topics.Ticket(devID), iss2.Ticket)
	iss.Put(topics.Root(2), ep2.Root)
	s2, err := wire.ParseStatus(iss.Wait(topics.Status(devID), 2))
	if err != nil || s2.Epoch != 2 || s2.State != wire.StateOK || s2.Seq != 2 {
		t.Fatalf("status 2 %+v %v", s2, err)
	}
	nextDevice(t, s2, iss2)
	if err := e.a.WaitEpoch(t.Context(), 2); err != nil {
		t.Fatal(err)
	}

	// Another device's ticket on this device's topic.
	iss.Put(topics.Ticket(devID), ticketOf(t, ep2, "dev-other"))
	s3raw := iss.Wait(topics.Status(devID), 3)
	s3, err := wire.ParseStatus(s3raw)
	if err != nil || s3.State != wire.StateRejected || s3.Reason != uint64(accept.ReasonWrongAudience) || s3.Epoch != 2 || s3.Seq != 3 {
		t.Fatalf("status 3 %+v %v", s3, err)
	}
	before := e.stateFile()

	// Restart: the same Status and Registration bytes are republished;
	// the retained bad ticket is re-delivered but not re-reported.
	stop()
	e.reopen()
	if e.a.Epoch() != 2 || !bytes.Equal(e.a.StatusBytes(), s3raw) {
		t.Fatal("restart lost the epoch or the status")
	}
	stop = runAgent(t, e)
	// The last Status, then the last acceptance (in case the rejection
	// overtook it, the issuer still needs its confirm tag).
	if !bytes.Equal(iss.Wait(topics.Status(devID), 4), s3raw) {
		t.Fatal("restarted agent did not republish the identical status")
	}
	if s4, err := wire.ParseStatus(iss.Wait(topics.Status(devID), 5)); err != nil || s4.State != wire.StateOK || s4.Epoch != 2 || s4.Seq != 2 {
		t.Fatalf("restarted agent did not republish its last acceptance last: %+v %v", s4, err)
	}
	if !bytes.Equal(iss.Wait(topics.Registration(devID), 2), regBytes) {
		t.Fatal("restarted agent did not republish the identical registration")
	}
	// The retained ticket of epoch 2 (accepted) is a silent duplicate.
	iss.Put(topics.Ticket(devID), iss2.Ticket)
	iss3, ep3 := e.is.issue(3, e.clock.Now(), nextDevice(t, s2, iss2))
	iss.Put(topics.Root(3), ep3.Root)
	iss.Put(topics.Ticket(devID), iss3.Ticket)
	s5, err := wire.ParseStatus(iss.Wait(topics.Status(devID), 6))
	if err != nil || s5.Epoch != 3 || s5.Seq != 4 || s5.State != wire.StateOK {
		t.Fatalf("status after restart %+v %v", s5, err)
	}
	stop()
	if n := len(iss.On(topics.Status(devID))); n != 6 {
		t.Fatalf("%d statuses published, want 6", n)
	}
	c := e.a.Counters()
	if c["duplicate"] < 1 || c["accepted"] != 1 || c["rejected:wrong_audience"] < 1 {
		t.Fatalf("counters after restart %v", c)
	}
	if bytes.Equal(before, e.stateFile()) {
		t.Fatal("state.bin not rewritten by an accepted ticket")
	}
}
