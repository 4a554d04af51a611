package device

import (
	"bytes"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/testbroker"
)

// A device that gets the root of a newer epoch but not its ticket replaces
// its ticket subscription, and stops once the ticket came; a device that
// gets its accepted ticket again sends its Status again.
func TestBehindAndDuplicate(t *testing.T) {
	defer func(r, s time.Duration) { resubscribeAfter, statusResendAfter = r, s }(resubscribeAfter, statusResendAfter)
	resubscribeAfter, statusResendAfter = 300*time.Millisecond, 200*time.Millisecond
	url := testbroker.Start(t)
	e := newEnv(t, func(c *Config) {
		c.Broker = url
		c.Password = "pw"
		c.Timeout = 5 * time.Second
		c.StaleInterval = 20 * time.Millisecond
	})
	iss := testbroker.Dial(t, url, "ekem-issuer", topics.AllRegistrations(), topics.AllStatuses())
	stop := runAgent(t, e)
	defer stop()
	regBytes := iss.Wait(topics.Registration(devID), 1)
	iss1, ep1 := e.is.issue(1, e.clock.Now(), regDevice(t, regBytes))
	iss.Put(topics.Root(1), ep1.Root)
	iss.Put(topics.Ticket(devID), iss1.Ticket)
	status1 := iss.Wait(topics.Status(devID), 1)

	// The same ticket again, after statusResendAfter: the same Status again.
	time.Sleep(2 * statusResendAfter)
	iss.Put(topics.Ticket(devID), iss1.Ticket)
	if again := iss.Wait(topics.Status(devID), 2); !bytes.Equal(again, status1) {
		t.Fatal("the Status sent again differs")
	}
	if n := e.a.Counters()["status_resent"]; n != 1 {
		t.Fatalf("status_resent = %d, want 1", n)
	}

	// Epoch 2's root without its ticket: the ticket subscription is
	// replaced, which re-delivers the retained ticket of epoch 1 (a
	// duplicate), then again every resubscribeAfter.
	_, ep2 := e.is.issue(2, e.clock.Now(), regDevice(t, regBytes))
	iss.Put(topics.Root(2), ep2.Root)
	deadline := time.Now().Add(20 * time.Second)
	for e.a.Counters()["resubscribed"] < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("never resubscribed: counters %v", e.a.Counters())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := e.a.Counters()["duplicate"]; d < 2 {
		t.Fatalf("the resubscription did not re-deliver the retained ticket: counters %v", e.a.Counters())
	}
	// Once a ticket of epoch 2 came (here one the device rejects: it is
	// from another issuance than the root), no more resubscriptions.
	tk2, _ := e.is.issue(2, e.clock.Now(), regDevice(t, regBytes))
	iss.Put(topics.Ticket(devID), tk2.Ticket)
	iss.Wait(topics.Status(devID), 3)
	n := e.a.Counters()["resubscribed"]
	time.Sleep(3 * resubscribeAfter)
	if m := e.a.Counters()["resubscribed"]; m != n {
		t.Fatalf("still resubscribing after the ticket came: %d, then %d", n, m)
	}
}
