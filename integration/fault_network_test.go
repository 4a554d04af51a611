package integration

// Network faults: the issuer and three devices reach the real Mosquitto
// only through internal/tcpproxy, which the test pauses (no byte crosses,
// no connection closes, as a stalled link) for 5 s and cuts (every
// connection closed at once) at different points of several epochs. Every
// client must reconnect, resubscribe and republish, and in the end every
// device is on the last epoch and the issuer verified its confirmation;
// nothing published is lost and no device's epoch ever goes back.

import (
	"errors"
	"testing"
	"time"

	"github.com/entropykem/entropykem/internal/tcpproxy"
	ekissuer "github.com/entropykem/entropykem/issuer"
)

// networkPause is how long a pause lasts: longer than a PUBACK normally
// takes, shorter than the clients' keepalive (30 s), so connections stall
// without being declared dead.
const networkPause = 5 * time.Second

func TestFaultNetworkPauseAndCut(t *testing.T) {
	ids := faultIDs("net-", 3)
	f := newSysFleet(t, ids...)
	px, err := tcpproxy.New(f.b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	url := "tcp://" + px.Addr()
	mon := subscribe(t, f.b, f.b.Monitor().Username, prefix+"#") // directly, not through the proxy
	iss := f.startIssuer(t, func(c *ekissuer.Config) { c.Broker = url })
	for _, id := range ids {
		f.startDeviceVia(t, id, url)
	}
	for _, id := range ids {
		if _, err := iss.WaitRegistered(ctxFor(t), id); err != nil {
			t.Fatalf("issuer did not pin %s through the proxy: %v", id, err)
		}
	}
	sampler := startEpochSampler(f.agents())
	f.issue(t, 1)
	f.converge(t, 1, ids...)
	e := uint64(1)

	// issue starts IssueEpoch; wait returns its epoch (publishing failures
	// are allowed: the epoch is persisted and republished on reconnect).
	issue := func() func() uint64 {
		type res struct {
			e   uint64
			err error
		}
		ch := make(chan res, 1)
		go func() { got, err := f.issueBounded(t); ch <- res{got, err} }()
		return func() uint64 {
			r := <-ch
			if r.err != nil && !errors.Is(r.err, ekissuer.ErrPublish) {
				t.Fatalf("IssueEpoch: %v", r.err)
			}
			if r.err != nil {
				t.Logf("IssueEpoch(%d): %v", r.e, r.err)
			}
			return r.e
		}
	}
	var pauses, cuts int
	cut := func() {
		cuts++
		t.Logf("cut %d closed %d connections", cuts, px.CutAll())
	}
	pause := func(d time.Duration) {
		pauses++
		px.Pause()
		time.Sleep(d) // the fault's duration, not a wait for a result
	}

	steps := []struct {
		name string
		run  func() uint64
	}{
		{"pause 5 s across an epoch", func() uint64 {
			wait := issue()
			pause(networkPause)
			px.Resume()
			return wait()
		}},
		{"cut, then issue while everyone reconnects", func() uint64 {
			cut()
			return issue()()
		}},
		{"cut at a random point of publishing", func() uint64 {
			wait := issue()
			time.Sleep(randDuration(20 * time.Millisecond))
			cut()
			return wait()
		}},
		{"pause 5 s, cut in the middle of it, resume", func() uint64 {
			wait := issue()
			pause(networkPause / 2)
			cut() // reconnections now stall in the paused proxy
			time.Sleep(networkPause / 2)
			px.Resume()
			return wait()
		}},
		{"three cuts in a row while an epoch goes out", func() uint64 {
			wait := issue()
			for range 3 {
				time.Sleep(randDuration(300 * time.Millisecond))
				cut()
			}
			return wait()
		}},
		{"pause 5 s, then cut on resume", func() uint64 {
			wait := issue()
			pause(networkPause)
			cut()
			px.Resume()
			return wait()
		}},
	}
	var all []func() uint64 // the steps once in CI, three times in a soak
	var names []string
	for range faultCount(1, 3) {
		for _, s := range steps {
			all, names = append(all, s.run), append(names, s.name)
		}
	}
	for k, run := range all {
		s := struct{ name string }{names[k]}
		got := run()
		e++
		if got != e {
			t.Fatalf("%s: issued epoch %d, want %d", s.name, got, e)
		}
		f.converge(t, e, ids...)
	}
	// One more epoch without a fault: everyone follows.
	e++
	f.issue(t, e)
	f.converge(t, e, ids...)

	sampler.check(t)
	for _, id := range ids {
		checkAcceptedEvents(t, id, f.devices[id].events.all())
	}
	f.checkCleanCounters(t)
	rec := analysePublished(t, mon.messages())
	rec.checkNoReuse(t)
	rec.checkChains(t)
	for _, id := range ids {
		if _, ok := rec.tickets[id][e]; !ok {
			t.Errorf("%s: the monitor never saw the ticket of the last epoch %d", id, e)
		}
	}
	c := iss.Counters()
	t.Logf("%d pauses of %v and %d cuts over %d epochs through the proxy (%d connections accepted); issuer republished %d messages, %d publish retries, %d failures",
		pauses, networkPause, cuts, e, px.Accepted(), c["republished"], c["publish_retries"], c["publish_failures"])
}
