package integration

// Helpers of the fault suite (fault_*_test.go): the ekem-issuer, ekem-device
// and crashdevice binaries built once per package run (so real processes
// can be SIGKILLed), a process wrapper that keeps every line a process
// printed, an epoch sampler that proves a device's epoch never goes back,
// and a recorder of everything the monitor account sees on ekem/v1/#.
//
// The fault tests run in CI mode by default; EKEM_SOAK=1 makes the crash
// loops long (see faultCount).

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/entropykem/entropykem/device"
	ekissuer "github.com/entropykem/entropykem/issuer"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// EnvSoak selects the long fault runs: EKEM_SOAK=1 go test -race -run Fault -timeout 60m ./integration/
const EnvSoak = "EKEM_SOAK"

// faultTimeout bounds every wait of the fault tests for something that
// needs a reconnection (paho backs off up to 5 s between attempts) and a
// few round trips through the broker. It bounds, it does not measure.
const faultTimeout = 45 * time.Second

// soak reports whether EKEM_SOAK=1.
func soak() bool { return os.Getenv(EnvSoak) == "1" }

// faultCount is ci in CI mode and long under EKEM_SOAK=1.
func faultCount(ci, long int) int {
	if soak() {
		return long
	}
	return ci
}

// TestMain removes the binaries built for the fault tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if faultBins.dir != "" {
		os.RemoveAll(faultBins.dir)
	}
	os.Exit(code)
}

// faultBins are the binaries, built at most once per package run.
var faultBins struct {
	once sync.Once
	dir  string
	out  string
	err  error
}

// binaries builds ekem-issuer, ekem-device and crashdevice (once) and
// returns the directory holding them.
func binaries(t testing.TB) string {
	t.Helper()
	faultBins.once.Do(func() {
		dir, err := os.MkdirTemp("", "ekem-fault-bin-")
		if err != nil {
			faultBins.err = err
			return
		}
		faultBins.dir = dir
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		}
		cmd := exec.Command(goBin, "build", "-o", dir+string(os.PathSeparator),
			"./cmd/ekem-issuer", "./cmd/ekem-device", "./cmd/ekemctl", "./integration/crashdevice", "./examples/cohort-telemetry")
		cmd.Dir = ".." // the module root
		out, err := cmd.CombinedOutput()
		faultBins.out, faultBins.err = string(out), err
	})
	if faultBins.err != nil {
		t.Fatalf("build binaries: %v\n%s", faultBins.err, faultBins.out)
	}
	return faultBins.dir
}

func binary(t testing.TB, name string) string {
	return filepath.Join(binaries(t), name)
}

// lineLog is an io.Writer that keeps a process's output as lines and
// signals every new line; safe for concurrent use.
type lineLog struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	notify  chan struct{}
}

func newLineLog() *lineLog { return &lineLog{notify: make(chan struct{}, 1)} }

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
	return len(p), nil
}

// all returns the complete lines so far.
func (l *lineLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// tail returns the last n lines and any partial one.
func (l *lineLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ls := l.lines
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	s := strings.Join(ls, "\n")
	if len(l.partial) > 0 {
		s += "\n" + string(l.partial) + " (no newline)"
	}
	return s
}

// proc is one child process of a fault test.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout *lineLog
	stderr *lineLog
	done   chan struct{}
	err    error // Wait's result, once done is closed
}

// startProc starts bin with args and extra environment (added to a minimal
// one); it is SIGKILLed at the end of the test if still running.
func startProc(t testing.TB, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, stdout: newLineLog(), stderr: newLineLog(), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.kill(t) })
	return p
}

// exited reports whether the process ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig and waits (bounded) until the process ended and its
// output is read to the end.
func (p *proc) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(faultTimeout):
		p.cmd.Process.Kill()
		t.Fatalf("%s did not exit within %v after %v; stderr:\n%s", p.name, faultTimeout, sig, p.stderr.tail(30))
	}
}

// kill is SIGKILL, as a power cut or the OOM killer would.
func (p *proc) kill(t testing.TB) { p.signal(t, syscall.SIGKILL) }

// killedBySignal reports whether the process ended by SIGKILL.
func (p *proc) killedBySignal() bool {
	var ee *exec.ExitError
	if !errors.As(p.err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// waitLine waits (bounded by timeout) until a stdout line satisfies match,
// or the process exits; it returns the line and whether one was found.
func (p *proc) waitLine(timeout time.Duration, match func(string) bool) (string, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		for _, l := range p.stdout.all() {
			if match(l) {
				return l, true
			}
		}
		select {
		case <-p.stdout.notify:
		case <-p.done:
			for _, l := range p.stdout.all() {
				if match(l) {
					return l, true
				}
			}
			return "", false
		case <-deadline.C:
			return "", false
		}
	}
}

// randDuration is uniform in [0, max).
func randDuration(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	n, err := rand.Int(rand.Reader, big.NewInt(int64(max)))
	if err != nil {
		panic(err)
	}
	return time.Duration(n.Int64())
}

// randIntn is uniform in [0, n).
func randIntn(n int) int { return int(randDuration(time.Duration(n))) }

// writeIssuerKeyFiles writes f.key as the PEM files ekem-issuer and the
// device tools read, and returns (secret key file, public key file).
func writeIssuerKeyFiles(t testing.TB, dir string, key *signature.PrivateKey) (string, string) {
	t.Helper()
	sec, pub := filepath.Join(dir, "issuer.key"), filepath.Join(dir, "issuer.pub")
	if err := os.WriteFile(sec, signature.MarshalPrivateKeyPEM(key), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pub, signature.MarshalPublicKeyPEM(key.Public()), 0o644); err != nil {
		t.Fatal(err)
	}
	return sec, pub
}

// writeCohortFile writes a fresh 32-byte cohort secret as hex and returns
// the file and the secret.
func writeCohortFile(t testing.TB, dir string) (string, []byte) {
	t.Helper()
	secret := make([]byte, 32)
	rand.Read(secret)
	p := filepath.Join(dir, "cohort.hex")
	if err := os.WriteFile(p, []byte(hex.EncodeToString(secret)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, secret
}

// epochSampler polls every device's Epoch() and records each change, so a
// test can prove that no device's accepted epoch ever went back, even for a
// moment (a rolled-back ticket that was accepted and later superseded).
type epochSampler struct {
	mu       sync.Mutex
	history  map[string][]uint64 // device → distinct values in the order seen
	stop     chan struct{}
	finished chan struct{}
}

func startEpochSampler(agents map[string]*device.Agent) *epochSampler {
	s := &epochSampler{history: map[string][]uint64{}, stop: make(chan struct{}), finished: make(chan struct{})}
	go func() {
		defer close(s.finished)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			s.sample(agents)
			select {
			case <-s.stop:
				s.sample(agents)
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *epochSampler) sample(agents map[string]*device.Agent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, a := range agents {
		e := a.Epoch()
		h := s.history[id]
		if len(h) == 0 || h[len(h)-1] != e {
			s.history[id] = append(h, e)
		}
	}
}

// check stops the sampler and fails the test if an epoch ever decreased.
func (s *epochSampler) check(t testing.TB) {
	t.Helper()
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.finished
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, h := range s.history {
		for k := 1; k < len(h); k++ {
			if h[k] < h[k-1] {
				t.Errorf("%s: Epoch() went back from %d to %d (rollback accepted); history %v", id, h[k-1], h[k], h)
			}
		}
	}
}

// checkAcceptedEvents fails the test unless a device's accepted events have
// strictly increasing epochs, each without a gap when it directly follows
// the previous one and with a gap naming the previous one otherwise: the
// device-side chain check.
func checkAcceptedEvents(t testing.TB, id string, evs []device.Event) {
	t.Helper()
	var last uint64
	for _, ev := range evs {
		if ev.Kind != device.EventAccepted {
			continue
		}
		switch {
		case ev.Epoch <= last:
			t.Errorf("%s: accepted epoch %d after %d (rollback or repeat)", id, ev.Epoch, last)
		case last > 0 && ev.Epoch == last+1 && ev.Gap:
			t.Errorf("%s: accepted epoch %d after %d reported as a gap (prev != previous ticket hash)", id, ev.Epoch, last)
		case last > 0 && ev.Epoch > last+1 && (!ev.Gap || ev.PrevEpoch != last):
			t.Errorf("%s: accepted epoch %d after %d without a recorded gap (gap %v prev_epoch %d)", id, ev.Epoch, last, ev.Gap, ev.PrevEpoch)
		}
		last = ev.Epoch
	}
}

// publishedRecord is everything the monitor account received on ekem/v1/#,
// checked for the issuer's invariants by checkPublished.
type publishedRecord struct {
	tickets map[string]map[uint64]map[string]*wire.TicketBody // device → epoch → ticket_hash hex → body
	order   map[string][]uint64                               // device → epochs in order of first sight
	roots   map[uint64]map[string]bool                        // epoch → distinct root payloads (hex of SHA-256)
	infos   []uint64                                          // EpochInfo epochs in arrival order
	maxEp   uint64
}

// analysePublished decodes every ticket, root and EpochInfo the monitor saw.
// A message that does not decode fails the test: the issuer only publishes
// well-formed messages (an empty retained payload clears a root topic).
func analysePublished(t testing.TB, msgs []message) *publishedRecord {
	t.Helper()
	r := &publishedRecord{
		tickets: map[string]map[uint64]map[string]*wire.TicketBody{},
		order:   map[string][]uint64{},
		roots:   map[uint64]map[string]bool{},
	}
	for _, m := range msgs {
		switch {
		case strings.HasPrefix(m.Topic, prefix+"ticket/"):
			id := strings.TrimPrefix(m.Topic, prefix+"ticket/")
			if m.Payload == "" {
				continue
			}
			_, body, err := wire.ParseTicket([]byte(m.Payload))
			if err != nil {
				t.Errorf("monitor: %s: ticket does not decode: %v", m.Topic, err)
				continue
			}
			if body.Aud != id {
				t.Errorf("monitor: %s carries a ticket for %q", m.Topic, body.Aud)
			}
			h := hex.EncodeToString(sha256Sum(mustTicketBodyBytes([]byte(m.Payload))))
			if r.tickets[id] == nil {
				r.tickets[id] = map[uint64]map[string]*wire.TicketBody{}
			}
			if r.tickets[id][body.Epoch] == nil {
				r.tickets[id][body.Epoch] = map[string]*wire.TicketBody{}
				r.order[id] = append(r.order[id], body.Epoch)
			}
			r.tickets[id][body.Epoch][h] = body
			r.maxEp = max(r.maxEp, body.Epoch)
		case strings.HasPrefix(m.Topic, prefix+"root/"):
			if m.Payload == "" {
				continue
			}
			e, err := strconv.ParseUint(strings.TrimPrefix(m.Topic, prefix+"root/"), 10, 64)
			if err != nil {
				t.Errorf("monitor: bad root topic %s", m.Topic)
				continue
			}
			p, err := signature.ParseSign1([]byte(m.Payload))
			if err != nil {
				t.Errorf("monitor: %s: root does not decode: %v", m.Topic, err)
				continue
			}
			root, err := wire.ParseEpochRoot(p.Payload)
			if err != nil || root.Epoch != e {
				t.Errorf("monitor: %s: root payload %v (epoch %v)", m.Topic, err, root)
				continue
			}
			if r.roots[e] == nil {
				r.roots[e] = map[string]bool{}
			}
			r.roots[e][hex.EncodeToString(sha256Sum([]byte(m.Payload)))] = true
		case m.Topic == topicEpoch:
			info, err := wire.ParseEpochInfo([]byte(m.Payload))
			if err != nil {
				t.Errorf("monitor: epoch info does not decode: %v", err)
				continue
			}
			r.infos = append(r.infos, info.Epoch)
		}
	}
	return r
}

// checkNoReuse fails the test if an epoch number was used twice: two
// different signed roots for one epoch, or two different ticket bodies for
// one (device, epoch).
func (r *publishedRecord) checkNoReuse(t testing.TB) {
	t.Helper()
	for e, rs := range r.roots {
		if len(rs) > 1 {
			t.Errorf("epoch %d reused: %d different signed roots published", e, len(rs))
		}
	}
	for id, byEpoch := range r.tickets {
		for e, bodies := range byEpoch {
			if len(bodies) > 1 {
				var hs []string
				for h := range bodies {
					hs = append(hs, h[:16])
				}
				sort.Strings(hs)
				t.Errorf("%s: epoch %d reused: %d different ticket bodies published (ticket_hash %v)", id, e, len(bodies), hs)
			}
		}
	}
}

// checkChains checks every device's published chain: for consecutive
// epochs e-1, e both seen, prev(e) = ticket_hash(e-1); where the record
// skips epochs the gap is counted and returned. A ticket of epoch e with
// ticket e-1 seen and another prev is a broken chain.
func (r *publishedRecord) checkChains(t testing.TB) (gaps int) {
	t.Helper()
	for id, byEpoch := range r.tickets {
		epochs := make([]uint64, 0, len(byEpoch))
		for e := range byEpoch {
			epochs = append(epochs, e)
		}
		sort.Slice(epochs, func(a, b int) bool { return epochs[a] < epochs[b] })
		for k, e := range epochs {
			for _, body := range byEpoch[e] {
				if k == 0 {
					continue
				}
				pe := epochs[k-1]
				if pe != e-1 {
					gaps++
					continue
				}
				ok := false
				for ph := range byEpoch[pe] {
					if hex.EncodeToString(body.Prev) == ph {
						ok = true
					}
				}
				if !ok {
					t.Errorf("%s: ticket of epoch %d has prev %x, not the hash of the published ticket of epoch %d", id, e, body.Prev[:8], pe)
				}
			}
		}
	}
	return gaps
}

// startDeviceVia is sysFleet.startDevice with another broker URL (a proxy).
func (f *sysFleet) startDeviceVia(t *testing.T, id, url string) *sysDevice {
	t.Helper()
	return f.startDeviceWith(t, id, func(c *device.Config) { c.Broker = url })
}

// agents returns the fleet's agents by id.
func (f *sysFleet) agents() map[string]*device.Agent {
	m := map[string]*device.Agent{}
	for id, d := range f.devices {
		m[id] = d.agent
	}
	return m
}

// converge waits (bounded by faultTimeout) until every device of ids has
// accepted exactly epoch e and the issuer verified its confirmation of e.
//
// Two product bugs that these faults provoke are diagnosed here, each failing
// the test with an error that names it, after which the test goes on (the
// next epoch is the next check) so that the remaining faults still run:
//   - the issuer quarantines a device as a clone although no second device
//     exists (it is then released, as an operator would);
//   - the device's acceptance Status for e (confirm tag and next key) is
//     superseded by a rejection Status before it reached the broker, so the
//     issuer can never verify e (seen when the issuer already holds the
//     device's later rejection Status).
func (f *sysFleet) converge(t *testing.T, e uint64, ids ...string) {
	t.Helper()
	for _, id := range ids {
		d := f.devices[id]
		ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
		err := d.agent.WaitEpoch(ctx, e)
		cancel()
		if err != nil {
			t.Fatalf("%s did not reach epoch %d within %v after the fault (on %d; events %s)", id, e, faultTimeout, d.agent.Epoch(), describeEvents(d.events.all()))
		}
		if got := d.agent.Epoch(); got != e {
			t.Fatalf("%s is on epoch %d, want %d", id, got, e)
		}
		confirmLost := func(i ekissuer.DeviceInfo) bool {
			st := d.agent.Status()
			return st.Epoch == e && !st.State.Accepted() && i.HasStatus && i.StatusSeq >= st.Seq && i.ConfirmedEpoch < e
		}
		ctx, cancel = context.WithTimeout(context.Background(), faultTimeout)
		info, err := f.iss.WaitFor(ctx, id, func(i ekissuer.DeviceInfo) bool {
			return i.ConfirmedEpoch >= e || i.State != ekissuer.StateActive || confirmLost(i)
		})
		cancel()
		switch {
		case info.State == ekissuer.StateQuarantined:
			t.Errorf("BUG (issuer): the issuer quarantined %s as a clone during a broker fault with no clone present (clone_detected=%d): "+
				"an older retained Status re-delivered by a broker restored from an older save (lower seq, different bytes) "+
				"is not a second device; see the issuer log for \"two different Status messages\"", id, f.iss.Counters()["clone_detected"])
			if err := f.iss.Admin().Release(id, ekissuer.Operator{Actor: "fault test", Reason: "released by the fault driver"}); err != nil {
				t.Fatalf("release %s: %v", id, err)
			}
			continue
		case err == nil && info.ConfirmedEpoch < e && confirmLost(info):
			st := d.agent.Status()
			t.Errorf("BUG (device): %s accepted epoch %d but its confirmation never reached the issuer: a rejection Status (seq %d, %s, reason %d) "+
				"superseded the unpublished acceptance Status, so the confirm tag and next key of epoch %d are lost "+
				"(issuer ConfirmedEpoch %d) and the next ticket reuses the device's KEM key; events %s",
				id, e, st.Seq, st.State, st.Reason, e, info.ConfirmedEpoch, describeEvents(d.events.all()))
			continue
		case err != nil:
			info, _ = f.iss.Device(id)
			t.Fatalf("issuer did not verify %s's confirmation of epoch %d within %v: %v (ConfirmedEpoch %d LastEpoch %d state %s)", id, e, faultTimeout, err, info.ConfirmedEpoch, info.LastEpoch, info.State)
		}
		if info.LastEpoch != e || info.ConfirmedEpoch != e {
			t.Fatalf("issuer: %s LastEpoch %d ConfirmedEpoch %d, want %d", id, info.LastEpoch, info.ConfirmedEpoch, e)
		}
	}
}

// issueBounded issues one epoch on its own goroutine and waits for it at
// most faultTimeout; publishing failures (ErrPublish) are returned, not
// fatal: the epoch stands and is republished.
func (f *sysFleet) issueBounded(t *testing.T) (uint64, error) {
	t.Helper()
	type res struct {
		e   uint64
		err error
	}
	ch := make(chan res, 1)
	ctx, cancel := context.WithTimeout(context.Background(), faultTimeout)
	defer cancel()
	go func() { e, err := f.iss.IssueEpoch(ctx); ch <- res{e, err} }()
	select {
	case r := <-ch:
		return r.e, r.err
	case <-time.After(faultTimeout + 5*time.Second):
		t.Fatalf("IssueEpoch did not return within %v", faultTimeout)
		return 0, nil
	}
}

// checkCleanCounters fails the test if a device saw equivocation or a
// local failure, or the issuer detected a clone: none of the faults may
// produce those.
func (f *sysFleet) checkCleanCounters(t testing.TB) {
	t.Helper()
	for id, d := range f.devices {
		c := d.agent.Counters()
		for _, name := range []string{"rejected:equivocation", "failed"} {
			if c[name] > 0 {
				t.Errorf("%s: counter %s = %d after faults; counters %v", id, name, c[name], c)
			}
		}
		if info, ok := f.iss.Device(id); ok && info.State != ekissuer.StateActive {
			t.Errorf("issuer: %s is %s after faults", id, info.State)
		}
	}
	if c := f.iss.Counters(); c["clone_detected"] > 0 {
		t.Errorf("issuer detected %d clones in a run without clones; counters %v", c["clone_detected"], c)
	}
}

func sha256Sum(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}

// mustTicketBodyBytes returns the exact body bytes of a ticket that
// wire.ParseTicket accepted: ticket_hash is SHA-256 of them.
func mustTicketBodyBytes(ticket []byte) []byte {
	tk, _, err := wire.ParseTicket(ticket)
	if err != nil {
		panic(err) // only called after a successful parse
	}
	return tk.Body
}

func faultIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for k := range ids {
		ids[k] = fmt.Sprintf("%s%d", prefix, k+1)
	}
	return ids
}
