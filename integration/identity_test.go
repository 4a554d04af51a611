package integration

// Attacks from a broker account against the shipped broker-config
// (DESIGN.md "Identity on the broker", issue #13). Each test checks that the
// attack fails (a refused connection, or a named reason with a counter) and
// that the legitimate devices accept every epoch issued while it runs.

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	fleetmon "github.com/entropykem/entropykem/internal/monitor"
	"github.com/entropykem/entropykem/internal/mosquittotest"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/issuer/adminsock"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/wire"
)

// attackFor is how long each looping attack runs while epochs are issued.
const attackFor = 10 * time.Second

// epochsDuring issues epochs from, from+1, … until d has passed, and checks
// that every device of ids accepts each one and the issuer verifies its
// confirmation. It returns the last epoch issued.
func epochsDuring(t *testing.T, f *sysFleet, from uint64, d time.Duration, ids ...string) uint64 {
	t.Helper()
	start := time.Now()
	e := from
	for ; e == from || time.Since(start) < d; e++ {
		f.issue(t, e)
		f.waitEpoch(t, e, ids...)
	}
	return e - 1
}

// dialAs connects with account name's password and the given client id,
// without reconnecting; lost (if not nil) is called when the broker closes
// the connection.
func dialAs(b *mosquittotest.Broker, name, clientID string, clean bool, lost func()) (mqtt.Client, error) {
	a, ok := b.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("no account %q", name)
	}
	o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(clientID).
		SetUsername(a.Username).SetPassword(a.Password).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(ackTimeout).SetProtocolVersion(4)
	if lost != nil {
		o.SetConnectionLostHandler(func(mqtt.Client, error) { lost() })
	}
	return dialOptions(o)
}

// An account that connects with the issuer's client id, or with another
// device's, takes over nothing: the broker replaces the client id with the
// username (use_username_as_clientid). Two attackers loop for attackFor
// while epochs are issued; the issuer and dev-1 are never disconnected.
func TestClientIDTakeoverFails(t *testing.T) {
	legit := []string{"dev-1", "dev-2"}
	f := newSysFleetWith(t, mosquittotest.Options{Devices: append([]string{"dev-x", "dev-y"}, legit...)})
	f.startIssuer(t, nil)
	f.startDevices(t, legit...)
	f.issue(t, 1)
	f.waitEpoch(t, 1, legit...)
	online := subscribe(t, f.b, monitor2, topicOnline)
	online.waitForTopic(t, topicOnline)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var connects [2]atomic.Int64
	attack := func(k int, account, clientID string) {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := dialAs(f.b, account, clientID, true, nil)
			if err != nil {
				continue // a refused attempt is the attack failing too
			}
			connects[k].Add(1)
			time.Sleep(20 * time.Millisecond)
			c.Disconnect(0)
		}
	}
	wg.Add(2)
	go attack(0, "dev-x", issuer)
	go attack(1, "dev-y", "dev-1")
	last := epochsDuring(t, f, 2, attackFor, legit...)
	close(stop)
	wg.Wait()

	log := f.b.Log()
	for _, victim := range []string{issuer, "dev-1"} {
		if strings.Contains(log, "Client "+victim+" already connected") {
			t.Errorf("the broker closed %s's connection for a client that used its client id", victim)
		}
	}
	for k, account := range []string{"dev-x", "dev-y"} {
		n := connects[k].Load()
		if n < 10 {
			t.Fatalf("%s connected only %d times in %v", account, n, attackFor)
		}
		// The broker replaced the requested client id with the username.
		if got := int64(strings.Count(log, " as "+account+" (")); got < n {
			t.Errorf("broker log shows %d connections with client id %s, want at least %d", got, account, n)
		}
	}
	// The issuer never went offline (its will would have said so).
	if n := len(online.messages()); n != 1 {
		t.Errorf("issuer/online changed %d times during the attack", n-1)
	}
	t.Logf("%d and %d takeover attempts; epochs 2 to %d accepted by %v", connects[0].Load(), connects[1].Load(), last, legit)
}

// A Status forged with only dev-1's broker password (state rejected, dev-1's
// current seq) is counted as an unauthenticated conflict and changes no
// standing: dev-1 is not quarantined and accepts the next epochs, and the
// monitor shows a suspicious report, not a clone.
func TestForgedStatusDoesNotQuarantine(t *testing.T) {
	const victim = "dev-1"
	ids := []string{victim, "dev-2"}
	f := newSysFleet(t, ids...)
	iss := f.startIssuer(t, nil)
	f.startDevices(t, ids...)
	statuses := subscribe(t, f.b, monitor2, prefix+"status/+", prefix+"root/+", prefix+"issuer/key/+")
	f.issue(t, 1)
	f.waitEpoch(t, 1, ids...)

	genuine := f.devices[victim].agent.Status()
	forged := cloneStatus(genuine)
	forged.State, forged.Reason = wire.StateRejected, uint64(accept.ReasonBadSignature)
	forged.Confirm, forged.NextAlg, forged.NextPK, forged.NextTag, forged.PrevEpoch = nil, 0, nil, nil, nil
	payload := mustMarshal(t, forged)
	before := f.deviceInfo(t, victim)

	// The attacker's connection takes over dev-1's session, and dev-1's
	// reconnection takes it back: try until one publish gets through.
	for try := 1; ; try++ {
		c, err := dialAs(f.b, victim, "attacker", true, nil)
		if err == nil {
			tok := c.Publish(statusTopic(victim), 1, true, payload)
			ok := tok.WaitTimeout(ackTimeout) && tok.Error() == nil
			c.Disconnect(0)
			if ok {
				break
			}
		}
		if try == 10 {
			t.Fatalf("the forged Status was never published: %v", err)
		}
	}
	waitCounter(t, "issuer", iss.Counters, "status_conflict_unauthenticated", 1)
	// The counter may move before the record is written: wait for both.
	sysWaitFor(t, "a WARN record of the unauthenticated conflict in the issuer's log", func() bool {
		return f.issLog.hasRecord(t, map[string]string{"reason": "status_conflict_unauthenticated", "device": victim, "level": "WARN"})
	})
	after := f.deviceInfo(t, victim)
	if after.State != ekissuer.StateActive || iss.Counters()["clone_detected"] != 0 || after.StatusSeq != before.StatusSeq {
		t.Fatalf("forged Status changed %s: state %s seq %d (was %d), counters %v", victim, after.State, after.StatusSeq, before.StatusSeq, iss.Counters())
	}

	last := epochsDuring(t, f, 2, 0, ids...)
	last = epochsDuring(t, f, last+1, 0, ids...)

	// The monitor, fed what it read live, reports it as suspicious.
	mon := fleetmon.NewFleet(fleetmon.Config{Pins: f.pins})
	var alarms []string
	for _, m := range statuses.messages() {
		if a := mon.Handle(m.Topic, []byte(m.Payload), time.Now()); a != nil {
			alarms = append(alarms, string(a.Kind))
		}
	}
	cnt := mon.Counters()
	if cnt[fleetmon.CountSuspicious] < 1 || cnt[fleetmon.CountClones] != 0 {
		t.Fatalf("monitor counters %v (alarms %v): want a suspicious report and no clone", cnt, alarms)
	}
	t.Logf("monitor alarms %v; epochs up to %d accepted by %v", alarms, last, ids)
}

// Revoking a password account and a certificate account takes effect
// without restarting the broker: "mkcreds revoke" (creds.Revoke) and
// SIGHUP. The password account's open connection is closed and it cannot
// connect again; the certificate is refused at its next CONNECT, and its
// open TLS connection can no longer publish anything anyone receives.
func TestRevokeWithoutRestart(t *testing.T) {
	legit := []string{"dev-1", "dev-2"}
	const pwAcct, certAcct, spare = "dev-pw", "dev-cert", "dev-spare"
	f := newSysFleetWith(t, mosquittotest.Options{Devices: append([]string{pwAcct, certAcct, spare}, legit...), TLS: true})
	f.startIssuer(t, nil)
	f.startDevices(t, legit...)
	f.issue(t, 1)
	f.waitEpoch(t, 1, legit...)
	regs := subscribe(t, f.b, monitor2, prefix+"reg/+")
	// A service instance is revoked too: a monitor instance whose
	// certificate leaked, with its TLS subscription open (it stays open
	// across the reload, so only the ACL can stop it).
	leaked := subscribeWith(t, f.b.TLSURL(), "", "", f.b.ClientTLS(monitor3), prefix+"reg/+")
	sentinel := connectAs(t, f.b, spare)

	pwLost := make(chan struct{})
	pwConn, err := dialAs(f.b, pwAcct, pwAcct, true, func() { close(pwLost) })
	if err != nil {
		t.Fatal(err)
	}
	defer pwConn.Disconnect(0)
	certConn, err := dial(f.b.TLSURL(), "", "", f.b.ClientTLS(certAcct))
	if err != nil {
		t.Fatal(err)
	}
	defer certConn.Disconnect(0)
	publishString(t, pwConn, regTopic(pwAcct), "before", false)
	publishString(t, certConn, regTopic(certAcct), "before", false)
	regs.waitFor(t, regTopic(pwAcct), "before") // positive controls
	regs.waitFor(t, regTopic(certAcct), "before")

	leaked.waitFor(t, regTopic(certAcct), "before")

	for _, name := range []string{pwAcct, certAcct, monitor3} {
		r := f.b.Revoke(name)
		if !r.Password || !r.Certificate || !r.ACL {
			t.Fatalf("revoke %s: %+v, want password, certificate and ACL changed", name, r)
		}
	}
	select {
	case <-pwLost:
	case <-time.After(waitTimeout):
		t.Fatal("the revoked password account's open connection was not closed")
	}
	if c, err := dialAs(f.b, pwAcct, "again", true, nil); err == nil {
		c.Disconnect(0)
		t.Fatal("a revoked password account connected")
	}
	if c, err := dial(f.b.TLSURL(), "", "", f.b.ClientTLS(certAcct)); err == nil {
		c.Disconnect(0)
		t.Fatal("a revoked client certificate connected")
	}
	// The TLS connection open before the revocation stays up (a CRL
	// reload closes nothing) but reaches nobody.
	certConn.Publish(regTopic(certAcct), 1, false, []byte("after")).WaitTimeout(ackTimeout)
	publishString(t, sentinel, regTopic(spare), "sentinel", false)
	regs.waitFor(t, regTopic(spare), "sentinel")
	regs.mustNotHave(t, "a revoked account's publish was delivered", payloadIs("after"))
	// The revoked monitor instance reads nothing more: its own user
	// section comes first in the ACL, and the revoked section's deny rules
	// still win.
	leaked.mustNotHave(t, "a revoked monitor instance read a registration", payloadIs("sentinel"))

	epochsDuring(t, f, 2, 0, legit...)
	if n := strings.Count(f.b.Log(), "mosquitto version 2."); n != 2 || !f.b.Running() { // "starting" and "running" once each
		t.Fatalf("the broker restarted (%d version lines)", n)
	}
	// Revoking again changes nothing.
	if r := f.b.Revoke(pwAcct); r.Changed() {
		t.Fatalf("second revoke changed %+v", r)
	}
}

// 300 connections of one account: each takes over the one before (one
// client id, so one connection and one session per account), and the
// devices keep accepting epochs.
func TestOneAccountManyConnections(t *testing.T) {
	const conns, attacker = 300, "dev-x"
	legit := []string{"dev-1", "dev-2"}
	f := newSysFleetWith(t, mosquittotest.Options{Devices: append([]string{attacker}, legit...)})
	f.startIssuer(t, nil)
	f.startDevices(t, legit...)
	f.issue(t, 1)
	f.waitEpoch(t, 1, legit...)

	var lost atomic.Int64
	clients := make([]mqtt.Client, 0, conns)
	done := make(chan error, 1)
	go func() {
		for k := range conns {
			// Persistent sessions with distinct client ids: without the
			// binding each would be a session of its own.
			c, err := dialAs(f.b, attacker, fmt.Sprintf("x-%d", k), false, func() { lost.Add(1) })
			if err != nil {
				done <- err
				return
			}
			clients = append(clients, c)
		}
		done <- nil
	}()
	e := uint64(2)
	for running := true; running; e++ {
		f.issue(t, e)
		f.waitEpoch(t, e, legit...)
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			running = false
		default:
		}
	}
	defer func() {
		for _, c := range clients {
			c.Disconnect(0)
		}
	}()
	sysWaitFor(t, fmt.Sprintf("%d of %d connections taken over", conns-1, conns), func() bool { return lost.Load() == conns-1 })
	open := 0
	for _, c := range clients {
		if c.IsConnectionOpen() {
			open++
		}
	}
	if open != 1 {
		t.Errorf("%d connections of one account open, want 1", open)
	}
	if n := strings.Count(f.b.Log(), "Client "+attacker+" already connected, closing old connection."); n != conns-1 {
		t.Errorf("broker took over %d sessions of %s, want %d", n, attacker, conns-1)
	}
	t.Logf("%d connections: %d taken over, %d open; epochs 2 to %d accepted by %v", conns, lost.Load(), open, e-1, legit)
}

// 3000 junk registrations from one account: each is refused and counted,
// the issuer writes a bounded number of log lines for them and one summary,
// stays healthy, and the devices accept every epoch meanwhile.
func TestJunkRegistrationsBoundedLog(t *testing.T) {
	const junk, attacker = 3000, "dev-x"
	legit := []string{"dev-1", "dev-2"}
	f := newSysFleetWith(t, mosquittotest.Options{Devices: append([]string{attacker}, legit...)})
	iss := f.startIssuer(t, nil)
	f.startDevices(t, legit...)
	f.issue(t, 1)
	f.waitEpoch(t, 1, legit...)

	c := connectAs(t, f.b, attacker)
	sent := make(chan error, 1)
	go func() {
		toks := make([]mqtt.Token, 0, junk)
		for k := range junk {
			toks = append(toks, c.Publish(regTopic(attacker), 1, false, fmt.Appendf(nil, "\xffjunk %d", k)))
		}
		for _, tok := range toks {
			if !tok.WaitTimeout(sysTimeout) || tok.Error() != nil {
				sent <- fmt.Errorf("publish: %v", tok.Error())
				return
			}
		}
		sent <- nil
	}()
	last := epochsDuring(t, f, 2, attackFor, legit...)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	waitCounter(t, "issuer", iss.Counters, "registrations_rejected:malformed", junk)
	sysWaitFor(t, "the issuer's summary of suppressed log lines", func() bool {
		return f.issLog.hasRecord(t, map[string]string{"reason": "log_rate_limited", "level": "WARN"})
	})
	lines := 0
	for _, r := range f.issLog.records(t) {
		if r["msg"] == "registration rejected" && r["device"] == attacker {
			lines++
		}
	}
	suppressed := iss.Counters()["log_lines_suppressed"]
	if lines < 1 || lines > 10 || uint64(lines)+suppressed < junk {
		t.Fatalf("%d log lines and %d suppressed for %d junk registrations; want 1 to 10 lines, the rest suppressed", lines, suppressed, junk)
	}
	rec := httptest.NewRecorder()
	iss.HealthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("issuer /healthz %d after the flood: %s", rec.Code, rec.Body)
	}
	t.Logf("%d junk registrations: %d log lines, %d suppressed; epochs 2 to %d accepted by %v", junk, lines, suppressed, last, legit)
}

// Under -enrollment allowlist, the ids imported from the manufacturing list
// are pinned on first use; an unlisted id's registration is held (refused
// with reason not_enrolled, counted) and gets no ticket until an operator
// approves it through the running issuer's admin socket; a second unlisted
// id is denied. Both actions are audited, and the listed devices accept
// every epoch meanwhile.
func TestAllowlistApproveAndDeny(t *testing.T) {
	listed := []string{"dev-1", "dev-2"}
	const unlisted, intruder = "dev-new", "dev-evil"
	f := newSysFleet(t, append([]string{unlisted, intruder}, listed...)...)
	iss := f.startIssuer(t, func(c *ekissuer.Config) { c.Enrollment = ekissuer.EnrollmentAllowlist })
	sock, err := adminsock.Listen(filepath.Join(t.TempDir(), "admin.sock"), iss.Admin(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	admin, err := adminsock.Dial(sock.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	list, err := ekissuer.ParseEnrollmentCSV(strings.NewReader("device_id\n" + strings.Join(listed, "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	op := ekissuer.Operator{Reason: "factory batch 7"}
	if res, err := admin.Enroll(list, op); err != nil || res.Added != len(listed) {
		t.Fatalf("enroll: %+v, %v", res, err)
	}
	f.startDevices(t, listed...)
	f.startDevice(t, unlisted)
	f.startDevice(t, intruder)
	waitCounter(t, "issuer", iss.Counters, "registrations_rejected:not_enrolled", 2)
	if !f.issLog.hasRecord(t, map[string]string{"reason": "not_enrolled", "device": unlisted, "level": "WARN"}) {
		t.Fatal("no WARN record of the held registration")
	}
	last := epochsDuring(t, f, 1, 0, listed...)
	last = epochsDuring(t, f, last+1, 0, listed...)
	for _, id := range []string{unlisted, intruder} {
		if _, err := admin.Device(id); !errors.Is(err, ekissuer.ErrUnknownDevice) {
			t.Fatalf("%s before approval: %v, want unknown to the store", id, err)
		}
		if e := f.devices[id].agent.Epoch(); e != 0 {
			t.Fatalf("%s accepted epoch %d before approval", id, e)
		}
	}

	if err := admin.Approve(unlisted, ekissuer.Operator{Reason: "installed by the field team"}); err != nil {
		t.Fatal(err)
	}
	if err := admin.Deny(intruder, ekissuer.Operator{Reason: "not ours"}); err != nil {
		t.Fatal(err)
	}
	e := last + 1
	f.issue(t, e)
	f.waitEpoch(t, e, append([]string{unlisted}, listed...)...)
	if info, err := admin.Device(intruder); err != nil || info.State != ekissuer.StateRevoked || info.LastEpoch != 0 {
		t.Fatalf("denied %s: %+v, %v", intruder, info, err)
	}
	audit, err := admin.Audit()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range audit {
		if !strings.Contains(a.Actor, "via admin socket") {
			t.Errorf("audit entry %+v does not name the socket's peer", a)
		}
		got = append(got, a.Action+":"+a.Device+":"+a.Reason)
	}
	want := "enroll::factory batch 7,approve:dev-new:installed by the field team,deny:dev-evil:not ours"
	if strings.Join(got, ",") != want {
		t.Fatalf("audit %q, want %q", strings.Join(got, ","), want)
	}
}
