package integration

// Node faults on the clustered broker: one of the three NATS nodes is
// killed with SIGKILL in the middle of an epoch (five times, a different
// node each time), or comes back with an empty store. The streams behind
// MQTT (retained messages, sessions) have three replicas, so two nodes keep
// a quorum: no PUBACKed retained message may be lost, every device must
// converge, and the fleet must keep rotating.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// witness publishes retained QoS 1 messages as the issuer (to ticket
// topics of ids that no device uses) until stop is closed, reconnecting
// after every failure, and records the last payload PUBACKed per topic.
type witness struct {
	mu    sync.Mutex
	acked map[string]string
	n     int
}

func (w *witness) run(t *testing.T, f *sysFleet, round int, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	a := f.account(issuer)
	var c mqtt.Client
	for k := 0; ; k++ {
		select {
		case <-stop:
			if c != nil {
				c.Disconnect(0)
			}
			return
		default:
		}
		if c == nil || !c.IsConnectionOpen() {
			o := mqtt.NewClientOptions().AddBroker(f.brokerURL()).SetClientID(fmt.Sprintf("witness-%d-%d", round, k)).
				SetUsername(a.Username).SetPassword(a.Password).SetCleanSession(true).SetAutoReconnect(false).
				SetConnectTimeout(2 * ackTimeout).SetProtocolVersion(4)
			c = mqtt.NewClient(o)
			if tok := c.Connect(); !tok.WaitTimeout(2*ackTimeout) || tok.Error() != nil {
				c = nil
				time.Sleep(100 * time.Millisecond)
				continue
			}
		}
		time.Sleep(50 * time.Millisecond) // a steady trickle, not a flood
		topic := ticketTopic(fmt.Sprintf("witness-%d-%d", round, k%20))
		payload := fmt.Sprintf("w%d-%d", round, k)
		tok := c.Publish(topic, 1, true, []byte(payload))
		if tok.WaitTimeout(2*ackTimeout) && tok.Error() == nil {
			w.mu.Lock()
			w.acked[topic] = payload
			w.n++
			w.mu.Unlock()
		} else {
			c.Disconnect(0)
			c = nil
		}
	}
}

// TestNATSNodeKilledMidEpoch kills one node with SIGKILL at a random point
// of an epoch, five times (nodes 1, 2, 3, 1, 2), restarting it (same store)
// before the next round. After each round every device has accepted the
// epoch and the issuer verified every confirmation, and a fresh reader
// finds every device's ticket of that epoch and the epoch's root.
//
// Nothing is restarted but the node: the issuer's nudge and the devices'
// Status resend heal what the broker may lose (broker-config/nats/
// README.md, "After a node's death"). The test also measures what NATS
// does with retained messages PUBACKed during the failover: a witness
// publishes retained messages throughout, and the test reports the topics
// whose last PUBACKed value a fresh reader never gets.
//
// It runs only with EKEM_NATS_FAULTS=1: issue #17 is open because this
// failover is not yet dependable. In CI a device's epoch-4 ticket once
// reached it only after its TTL, so it stayed on epoch 3 until the next
// epoch; runs take 4 to 8 minutes.
func TestNATSNodeKilledMidEpoch(t *testing.T) {
	if os.Getenv("EKEM_NATS_FAULTS") != "1" {
		t.Skip("NATS node-kill failover is not dependable yet (issue #17); EKEM_NATS_FAULTS=1 runs it")
	}
	t.Parallel() // with the other NATS tests: see nats_helpers_test.go
	ids := []string{"dev-1", "dev-2", "dev-3"}
	f := newNATSFleet(t, ids...)
	f.startIssuer(t, nil)
	f.startDevices(t, ids...)
	sampler := startEpochSampler(f.agents())
	start := time.Now()
	f.issue(t, 1)
	issueTook := time.Since(start)
	f.converge(t, 1, ids...)
	e := uint64(1)
	const rounds = 5
	lostWitness, notServed := 0, 0
	for round := 0; round < rounds; round++ {
		node := round % 3
		w := &witness{acked: map[string]string{}}
		stopW, doneW := make(chan struct{}), make(chan struct{})
		go w.run(t, f, round, stopW, doneW)

		type res struct {
			e   uint64
			err error
		}
		ch := make(chan res, 1)
		go func() { got, err := f.issueBounded(t); ch <- res{got, err} }()
		delay := randDuration(issueTook) // within the last fault-free IssueEpoch's duration
		time.Sleep(delay)
		if err := f.nats.Kill(node); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		r := <-ch
		if r.err != nil && !errors.Is(r.err, ekissuer.ErrPublish) {
			t.Fatalf("round %d: IssueEpoch: %v", round, r.err)
		}
		e++
		if r.e != e {
			t.Fatalf("round %d: IssueEpoch issued epoch %d, want %d (%v)", round, r.e, e, r.err)
		}
		acc, conf := f.natsConverge(t, e, ids...)
		converged := time.Since(killed)
		close(stopW)
		<-doneW
		lostW, lostSys := f.checkRetained(t, e, w.acked)
		lostWitness += len(lostW)
		notServed += len(lostSys)
		t.Logf("round %d: node %d SIGKILLed %v into the epoch (IssueEpoch: %v); every device on epoch %d %v after the kill (accepted %v, confirmed %v after IssueEpoch returned); "+
			"witness: %d PUBACKed retained publishes to %d topics, last value lost on %d",
			round, node+1, delay.Round(time.Millisecond), r.err, e, converged.Round(time.Millisecond), acc.Round(time.Millisecond), conf.Round(time.Millisecond), w.n, len(w.acked), len(lostW))

		// The node comes back on its store; the next round kills another
		// node, so the epoch of the next round needs this one's replicas
		// (after the last round, one more epoch on the whole cluster).
		restartAt := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), natsRecovery)
		err := f.nats.Restart(ctx, node)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: node %d back and healthy in %v", round, node+1, time.Since(restartAt).Round(time.Millisecond))
	}
	e++
	if got, err := f.issueBounded(t); err != nil && !errors.Is(err, ekissuer.ErrPublish) || got != e {
		t.Fatalf("after the last restart: IssueEpoch = %d, %v; want epoch %d", got, err, e)
	}
	f.natsConverge(t, e, ids...)
	_, lostSys := f.checkRetained(t, e, nil)
	notServed += len(lostSys)
	sampler.check(t)
	for _, id := range ids {
		checkAcceptedEvents(t, id, f.devices[id].events.all())
	}
	f.checkCleanCounters(t)
	c := f.iss.Counters() // since the last issuer restart, if any
	resent, resubscribed := uint64(0), uint64(0)
	for _, id := range ids {
		resent += f.devices[id].agent.Counters()["status_resent"]
		resubscribed += f.devices[id].agent.Counters()["resubscribed"]
	}
	t.Logf("%d SIGKILLs over %d epochs; issuer republished %d messages (reconnections), nudged %d, %d publish retries, %d publish failures; devices resent %d Statuses and replaced %d subscriptions; %d witness topics lost their last PUBACKed retained message",
		rounds, e, c["republished"], c["nudged"], c["publish_retries"], c["publish_failures"], resent, resubscribed, lostWitness)
	// NATS stores a retained message apart from its delivery and PUBACKs
	// even when that store fails ("unable to store retained message" in
	// the node's log): the witness has no issuer to heal it, so its losses
	// are reported, not failed; tickets and roots are checked above.
	t.Logf("nodes logged %d failed stores of retained messages", grepLog(f.nats, "unable to store retained message"))
	t.Logf("tickets and roots a fresh subscriber did not get within %v of convergence: %d", natsTimeout, notServed)
}

// natsRecovery bounds the convergence after a node's death: on this
// shared 2-core machine (load 6-16) the surviving nodes refused or timed
// out new MQTT sessions, subscriptions and stores for up to about a
// minute, and a subscription that stalled meanwhile is healed by the
// device's resubscription or the issuer's peek, which run on the nudge's
// schedule (2, 6, 14, 30, 62 s after the epoch here). It bounds a wait;
// the test logs the times taken.
const natsRecovery = 5 * time.Minute

// natsConverge waits until every device accepted e and the issuer verified
// every confirmation, restarting nothing: the system heals by itself
// (broker-config/nats/README.md, "After a node's death"). If a device
// stays behind it reports whether its retained ticket of e is missing. It
// returns how long the devices took to accept and the issuer to verify.
func (f *sysFleet) natsConverge(t *testing.T, e uint64, ids ...string) (accepted, confirmed time.Duration) {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), natsRecovery)
	defer cancel()
	for _, id := range ids {
		if err := f.devices[id].agent.WaitEpoch(ctx, e); err != nil {
			lost := f.lostTickets(t, e, []string{id})
			t.Fatalf("%s did not reach epoch %d within %v (on %d; retained ticket of e missing: %v; events %s)",
				id, e, natsRecovery, f.devices[id].agent.Epoch(), len(lost) > 0, describeEvents(f.devices[id].events.all()))
		}
	}
	accepted = time.Since(start)
	for _, id := range ids {
		if _, err := f.iss.WaitConfirmed(ctx, id, e); err != nil {
			t.Fatalf("issuer did not verify %s's confirmation of epoch %d within %v", id, e, natsRecovery)
		}
	}
	confirmed = time.Since(start)
	f.converge(t, e, ids...) // the remaining checks
	return accepted, confirmed
}

// natsIssue issues epoch e on a cluster that may be failing over:
// IssueEpoch may return ErrPublish (the epoch is persisted; the issuer's
// republish and nudge deliver it), nothing else.
func (f *sysFleet) natsIssue(t *testing.T, e uint64) {
	t.Helper()
	got, err := f.issueBounded(t)
	if err != nil && !errors.Is(err, ekissuer.ErrPublish) || got != e {
		t.Fatalf("IssueEpoch = %d, %v; want epoch %d", got, err, e)
	}
	if err != nil {
		t.Logf("epoch %d: %v", e, err)
	}
}

// lostTickets returns the devices of ids whose retained ticket of epoch e
// is missing from two fresh snapshots of the retained messages in a row
// (one snapshot may come from a node whose copy lags: checkRetained).
func (f *sysFleet) lostTickets(t *testing.T, e uint64, ids []string) []string {
	t.Helper()
	missing := map[string]int{}
	for range 2 {
		mon := natsGranted(t, f.nats, monitor, prefix+"ticket/+")
		time.Sleep(2 * time.Second)
		have := map[string]bool{}
		for _, m := range mon.messages() {
			if _, body, err := wire.ParseTicket([]byte(m.Payload)); err == nil && m.Retained && body.Epoch == e {
				have[body.Aud] = true
			}
		}
		mon.client.Disconnect(0)
		for _, id := range ids {
			if !have[id] {
				missing[id]++
			}
		}
	}
	var lost []string
	for _, id := range ids {
		if missing[id] == 2 {
			lost = append(lost, id)
		}
	}
	return lost
}

// checkRetained reads every retained message under ekem/v1 as a fresh
// monitor and checks: each device's ticket is of epoch e, root/e is
// retained, and every witness topic holds its last PUBACKed payload. It
// returns what is still missing at the end of the window: witness topics,
// and tickets or roots of the fleet (system).
//
// Each node serves retained messages from its own copy of the replicated
// retained-message stream, updated asynchronously after the PUBACK: a
// subscriber on another node can get the previous retained message for a
// moment (broker-config/nats/README.md, "Retained messages"). So a
// snapshot that misses something is retaken with a fresh subscriber until
// the window ends.
//
// On NATS 2.15.3 a fresh subscriber sometimes did not get a root for
// minutes after a node's death, though the issuer's nudges republished it
// (PUBACKed) several times and every device had it: issue #17 records
// this as not met. By default a ticket or root still missing after
// natsTimeout is reported (the test logs it and counts it), not failed;
// with EKEM_NATS_STRICT_RETAINED=1 the window is natsRecovery and such a
// loss fails the test.
func (f *sysFleet) checkRetained(t *testing.T, e uint64, acked map[string]string) (lostWitness, system []string) {
	t.Helper()
	strict := os.Getenv("EKEM_NATS_STRICT_RETAINED") == "1"
	window := natsTimeout
	if strict {
		window = natsRecovery
	}
	deadline := time.Now().Add(window)
	for attempt := 1; ; attempt++ {
		mon := natsGranted(t, f.nats, monitor, prefix+"#")
		var missing []string
		for wait := time.Now().Add(2 * time.Second); ; {
			missing = f.missingRetained(mon.messages(), e, acked)
			if len(missing) == 0 || time.Now().After(wait) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		mon.client.Disconnect(0)
		lostWitness, system = lostWitness[:0], system[:0]
		for _, m := range missing {
			if acked[m] != "" {
				lostWitness = append(lostWitness, m)
			} else {
				system = append(system, m)
			}
		}
		if len(missing) == 0 {
			if attempt > 1 {
				t.Logf("retained state complete at the %d-th fresh subscriber", attempt)
			}
			return nil, nil
		}
		if time.Now().After(deadline) {
			if len(system) > 0 {
				if strict {
					t.Fatalf("tickets or roots lost: a fresh subscriber still misses %v after %v", system, window)
				}
				t.Logf("NOT MET (issue #17): a fresh subscriber still misses %v after %v; every device has them", system, window)
			}
			return lostWitness, system
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// missingRetained lists what a snapshot of retained messages lacks.
func (f *sysFleet) missingRetained(ms []message, e uint64, acked map[string]string) []string {
	have := map[string]bool{}
	for _, m := range ms {
		if !m.Retained {
			continue
		}
		switch {
		case m.Topic == rootTopic(int(e)):
			if p, err := signature.ParseSign1([]byte(m.Payload)); err == nil {
				if r, err := wire.ParseEpochRoot(p.Payload); err == nil && r.Epoch == e {
					have[m.Topic] = true
				}
			}
		case acked[m.Topic] != "":
			if m.Payload == acked[m.Topic] {
				have[m.Topic] = true
			}
		default:
			if _, body, err := wire.ParseTicket([]byte(m.Payload)); err == nil && body.Epoch == e && m.Topic == ticketTopic(body.Aud) {
				have[m.Topic] = true
			}
		}
	}
	var missing []string
	want := []string{rootTopic(int(e))}
	for _, id := range f.deviceIDs() {
		want = append(want, ticketTopic(id))
	}
	for topic := range acked {
		want = append(want, topic)
	}
	for _, w := range want {
		if !have[w] {
			missing = append(missing, w)
		}
	}
	return missing
}

func (f *sysFleet) deviceIDs() []string {
	var ids []string
	for id := range f.devices {
		ids = append(ids, id)
	}
	return ids
}

// TestNATSNodeRestartedEmpty replaces a node's store: node 1 is killed, its
// JetStream directory deleted, and it is started again. It rejoins, catches
// up (a monitor connected to it alone reads the fleet's retained tickets and
// roots), and the fleet keeps rotating; then node 2 is killed, so the
// replicas on the rebuilt node 1 and on node 3 carry the fleet on.
func TestNATSNodeRestartedEmpty(t *testing.T) {
	t.Parallel() // with the other NATS tests: see nats_helpers_test.go
	ids := []string{"dev-1", "dev-2", "dev-3"}
	f := newNATSFleet(t, ids...)
	f.startIssuer(t, nil)
	f.startDevices(t, ids...)
	f.issue(t, 1)
	f.converge(t, 1, ids...)
	if err := f.nats.Kill(0); err != nil {
		t.Fatal(err)
	}
	f.natsIssue(t, 2)
	f.natsConverge(t, 2, ids...)
	ctx, cancel := context.WithTimeout(context.Background(), natsRecovery)
	err := f.nats.RestartEmpty(ctx, 0)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	// The rebuilt node alone serves the retained state of epoch 2.
	a := f.account(monitor)
	r := &recorder{name: monitor, notify: make(chan struct{}, 1)}
	r.client = natsDial(t, f.nats.NodeURL(0), a.Username, a.Password, "", r.handle)
	deadline := time.Now().Add(natsRecovery)
	for {
		tok := r.client.Subscribe(prefix+"#", 1, nil)
		if tok.WaitTimeout(2*ackTimeout) && tok.Error() == nil && tok.(*mqtt.SubscribeToken).Result()[prefix+"#"] < 0x80 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rebuilt node refuses the monitor's subscription")
		}
		time.Sleep(200 * time.Millisecond)
	}
	r.waitUntil(t, natsRecovery, "the rebuilt node's retained tickets and root of epoch 2", func(ms []message) bool {
		return len(f.missingRetained(ms, 2, nil)) == 0
	})
	// Before another node goes down the rebuilt one must hold current
	// replicas of every stream (/healthz), as an operator checks: serving
	// retained messages is not enough, and with node 2 dead and node 1
	// behind, the streams would have no quorum.
	ctx, cancel = context.WithTimeout(context.Background(), natsRecovery)
	err = f.nats.WaitCurrent(ctx, 0)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	for e := uint64(3); e <= 4; e++ {
		f.natsIssue(t, e)
		f.natsConverge(t, e, ids...)
	}
	if err := f.nats.Kill(1); err != nil {
		t.Fatal(err)
	}
	for e := uint64(5); e <= 6; e++ {
		f.natsIssue(t, e)
		f.natsConverge(t, e, ids...)
	}
	f.checkRetained(t, 6, nil)
	f.checkCleanCounters(t)
}
