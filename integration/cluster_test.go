package integration

// Several ekem-issuer instances on one PostgreSQL (issue #12), against a
// real Mosquitto and a real PostgreSQL (internal/pgtest), with the real
// binary and in-process devices:
//
//   - the leader is SIGKILLed at random points, mid-epoch included, again
//     and again: the standby takes over, every epoch number has exactly
//     one root as seen by a monitor that ran throughout, no ticket is
//     reused and every device keeps accepting;
//   - the leader's database connection is cut (tcp proxy): it stops
//     publishing, the standby takes over, no epoch is published twice;
//   - the leader is paused (SIGSTOP) past its lease, then resumed: it
//     publishes nothing more;
//   - every operator command runs against the database of the live
//     cluster, audited there; the metrics show which instance leads;
//   - an older copy of the database put back, or an empty one: every
//     instance refuses to start, 'recover' (once SIGKILLed first) brings
//     the fleet back, and no epoch is reused.

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/broker-config/creds"
	"github.com/entropykem/entropykem/internal/pgtest"
	"github.com/entropykem/entropykem/internal/tcpproxy"
	ekissuer "github.com/entropykem/entropykem/issuer"
)

// Cluster timing: short, so a dozen failovers fit in CI.
const (
	clusterPeriod = 2 * time.Second
	clusterLease  = 600 * time.Millisecond
)

// pgCluster is a fleet, a PostgreSQL database and the issuer instances.
type pgCluster struct {
	f    *sysFleet
	pg   *pgtest.Server
	url  string
	bin  *binIssuer
	mon  *recorder
	ids  []string
	inst map[string]*proc // client id → running process
	// accts gives each instance (by client id) its own issuer account.
	accts map[string]creds.Account
}

func newPGCluster(t *testing.T, n int, accounts ...string) *pgCluster {
	t.Helper()
	pg := pgtest.Start(t)
	ids := faultIDs("cl-", n)
	f := newSysFleet(t, append(ids, accounts...)...)
	c := &pgCluster{f: f, pg: pg, url: pg.URL(pg.NewDatabase(t)), ids: ids, inst: map[string]*proc{}, accts: map[string]creds.Account{}}
	if _, _, err := ekissuer.MigratePostgres(c.url); err != nil {
		t.Fatal(err)
	}
	c.mon = subscribe(t, f.b, f.b.Monitor().Username, prefix+"#")
	c.bin = newBinIssuer(t, f)
	c.bin.store = c.url
	for _, id := range ids {
		f.startDevice(t, id)
	}
	return c
}

// start starts instance name with the store at url (default: direct).
func (c *pgCluster) start(t *testing.T, name, url string, extra ...string) *proc {
	t.Helper()
	if url == "" {
		url = c.url
	}
	// Each instance has its own broker account: the broker binds the
	// client id to the username, so two instances on one account would
	// take each other's session over.
	acct, ok := c.accts[name]
	if !ok {
		acct = c.f.b.Account(brokerconfig.InstanceName(brokerconfig.IssuerAccount, len(c.accts)+1))
		c.accts[name] = acct
	}
	args := append([]string{"run", "-broker", c.f.b.URL(), "-username", acct.Username,
		"-key", c.bin.key, "-store", url, "-period", clusterPeriod.String(), "-lease-ttl", clusterLease.String(),
		"-client-id", name, "-log-format", "json"}, extra...)
	p := startProc(t, "ekem-issuer "+name, []string{"EKEM_PASSWORD=" + acct.Password}, c.bin.bin, args...)
	c.inst[name] = p
	return p
}

// lease reads the lease from the database.
func (c *pgCluster) lease(t *testing.T) ekissuer.LeaseStatus {
	t.Helper()
	st, err := ekissuer.OpenStore(c.url, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := st.(ekissuer.Leaser).LeaseStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (c *pgCluster) lastEpoch(t *testing.T) uint64 {
	t.Helper()
	st, err := ekissuer.OpenStore(c.url, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var e uint64
	if err := st.View(func(tx ekissuer.ReadTx) (err error) { e, err = tx.LastEpoch(); return err }); err != nil {
		t.Fatal(err)
	}
	return e
}

// waitLeader waits until a live lease is held by one of names, and
// returns it.
func (c *pgCluster) waitLeader(t *testing.T, names ...string) ekissuer.LeaseStatus {
	t.Helper()
	var l ekissuer.LeaseStatus
	sysWaitFor(t, fmt.Sprintf("a leader among %v", names), func() bool {
		l = c.lease(t)
		for _, n := range names {
			if l.Live && l.Holder == n {
				return true
			}
		}
		return false
	})
	return l
}

// waitEpochAbove waits until the store's last epoch is above e.
func (c *pgCluster) waitEpochAbove(t *testing.T, e uint64) uint64 {
	t.Helper()
	var last uint64
	sysWaitFor(t, fmt.Sprintf("an epoch above %d", e), func() bool {
		last = c.lastEpoch(t)
		return last > e
	})
	return last
}

// checkPublished checks the monitor's record: every epoch from first to
// the last has exactly one root payload, and no ticket was reused.
func (c *pgCluster) checkPublished(t *testing.T, first uint64) *publishedRecord {
	t.Helper()
	time.Sleep(300 * time.Millisecond) // the last messages in flight
	rec := analysePublished(t, c.mon.messages())
	rec.checkNoReuse(t)
	var max uint64
	for e := range rec.roots {
		max = maxU(max, e)
	}
	for e := first; e <= max; e++ {
		if n := len(rec.roots[e]); n != 1 {
			t.Errorf("epoch %d: %d distinct root payloads seen, want exactly 1", e, n)
		}
	}
	return rec
}

func maxU(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// logLines are the JSON log records of p whose msg is msg.
func logLines(p *proc, msg string) []map[string]any {
	var out []map[string]any
	for _, l := range p.stderr.all() {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestIssuerClusterFailover: two instances; the leader is SIGKILLed at a
// random point of its period (mid-epoch included) at least ten times.
func TestIssuerClusterFailover(t *testing.T) {
	c := newPGCluster(t, 3)
	names := []string{"ekem-issuer-a", "ekem-issuer-b"}
	for _, n := range names {
		c.start(t, n, "")
	}
	c.waitLeader(t, names...)
	first := c.waitEpochAbove(t, 0)
	c.f.waitFleetEpoch(t, first, c.ids...)

	rounds := faultCount(10, 30)
	var takeovers, nextEpochs []time.Duration
	for r := range rounds {
		l := c.waitLeader(t, names...)
		victim := l.Holder
		last := c.waitEpochAbove(t, c.lastEpoch(t))
		if r%2 == 0 {
			// A random point of the period.
			time.Sleep(randDuration(clusterPeriod))
		} else {
			// Mid-epoch: the moment the next epoch is committed, as its
			// publication begins.
			n := len(logLines(c.inst[victim], "epoch issued and persisted"))
			for deadline := time.Now().Add(3 * clusterPeriod); len(logLines(c.inst[victim], "epoch issued and persisted")) == n && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
		}
		c.inst[victim].kill(t)
		killed := time.Now()
		other := names[0]
		if victim == other {
			other = names[1]
		}
		nl := c.waitLeader(t, other)
		takeovers = append(takeovers, time.Since(killed))
		if nl.Token <= l.Token {
			t.Fatalf("round %d: token %d after %d", r, nl.Token, l.Token)
		}
		at := c.lastEpoch(t)
		c.waitEpochAbove(t, at)
		nextEpochs = append(nextEpochs, time.Since(killed))
		c.start(t, victim, "") // back as a standby
		t.Logf("round %d: killed %s after epoch %d; %s took over in %v, next epoch after %v",
			r, victim, last, other, takeovers[r].Round(time.Millisecond), nextEpochs[r].Round(time.Millisecond))
	}
	last := c.waitEpochAbove(t, c.lastEpoch(t))
	c.f.waitFleetEpoch(t, last, c.ids...)
	for _, id := range c.ids {
		if n := c.f.devices[id].agent.Counters(); n["rejected:wrong_device_key"] > 0 || n["rejected:equivocation"] > 0 {
			t.Errorf("%s rejected tickets: %v", id, n)
		}
	}
	c.checkPublished(t, first)
	sort.Slice(takeovers, func(a, b int) bool { return takeovers[a] < takeovers[b] })
	sort.Slice(nextEpochs, func(a, b int) bool { return nextEpochs[a] < nextEpochs[b] })
	t.Logf("failover over %d SIGKILLs (period %v, lease %v): lease taken over in median %v, max %v; next epoch committed after median %v, max %v",
		rounds, clusterPeriod, clusterLease, takeovers[len(takeovers)/2].Round(time.Millisecond), takeovers[len(takeovers)-1].Round(time.Millisecond),
		nextEpochs[len(nextEpochs)/2].Round(time.Millisecond), nextEpochs[len(nextEpochs)-1].Round(time.Millisecond))
	if takeovers[len(takeovers)-1] > clusterPeriod {
		t.Errorf("a standby took %v to take the lease, more than one period (%v)", takeovers[len(takeovers)-1], clusterPeriod)
	}
}

// TestIssuerClusterDatabaseCut: the leader reaches PostgreSQL through a
// tcp proxy, which stalls and cuts it: it stops publishing, the standby
// (direct) takes over, no epoch is published twice; once the link is
// back, the old leader is a standby.
func TestIssuerClusterDatabaseCut(t *testing.T) {
	c := newPGCluster(t, 2)
	px, err := tcpproxy.New(c.pg.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	a := c.start(t, "ekem-issuer-a", pgtest.URLAt(px.Addr(), dbName(c.url)))
	c.waitLeader(t, "ekem-issuer-a")
	c.start(t, "ekem-issuer-b", "")
	first := c.waitEpochAbove(t, 0)
	c.f.waitFleetEpoch(t, first, c.ids...)
	l := c.waitLeader(t, "ekem-issuer-a")

	time.Sleep(randDuration(clusterPeriod))
	px.Pause()
	px.CutAll()
	cut := time.Now()
	nl := c.waitLeader(t, "ekem-issuer-b")
	t.Logf("database link cut: ekem-issuer-b took over in %v", time.Since(cut).Round(time.Millisecond))
	if nl.Token <= l.Token {
		t.Fatalf("token %d after %d", nl.Token, l.Token)
	}
	if len(logLines(a, "leader lease lost: stopped publishing")) == 0 {
		sysWaitFor(t, "ekem-issuer-a to stop leading", func() bool { return len(logLines(a, "leader lease lost: stopped publishing")) > 0 })
	}
	e := c.waitEpochAbove(t, c.lastEpoch(t))
	c.f.waitFleetEpoch(t, e, c.ids...)
	px.Resume()
	e = c.waitEpochAbove(t, c.lastEpoch(t))
	c.f.waitFleetEpoch(t, e, c.ids...)
	if l := c.lease(t); l.Holder != "ekem-issuer-b" {
		t.Errorf("lease holder after the link came back: %+v", l)
	}
	c.checkPublished(t, first)
}

// TestIssuerClusterPaused: the leader is paused (SIGSTOP) at a random
// point past its lease, the standby takes over, then it is resumed
// (SIGCONT): it publishes nothing more, and commits nothing.
func TestIssuerClusterPaused(t *testing.T) {
	c := newPGCluster(t, 2)
	a := c.start(t, "ekem-issuer-a", "")
	c.waitLeader(t, "ekem-issuer-a")
	c.start(t, "ekem-issuer-b", "")
	first := c.waitEpochAbove(t, 0)
	c.f.waitFleetEpoch(t, first, c.ids...)

	time.Sleep(randDuration(clusterPeriod))
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	c.waitLeader(t, "ekem-issuer-b")
	e := c.waitEpochAbove(t, c.lastEpoch(t))
	c.f.waitFleetEpoch(t, e, c.ids...)
	before := len(a.stderr.all())
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// Two more periods under b.
	e = c.waitEpochAbove(t, c.lastEpoch(t))
	e = c.waitEpochAbove(t, e)
	c.f.waitFleetEpoch(t, e, c.ids...)
	after := a.stderr.all()[before:]
	for _, l := range after {
		for _, bad := range []string{`"msg":"epoch issued and persisted"`, `"msg":"republished from the store"`, `"msg":"leading"`} {
			if strings.Contains(l, bad) {
				t.Errorf("the resumed, deposed leader logged %s:\n%s", bad, l)
			}
		}
	}
	if !strings.Contains(strings.Join(after, "\n"), "leader lease lost") {
		t.Errorf("the resumed leader did not notice it lost the lease:\n%s", strings.Join(after, "\n"))
	}
	c.checkPublished(t, first)
}

// dbName is the database of a pgtest URL.
func dbName(url string) string {
	s := url[strings.LastIndex(url, "/")+1:]
	return s[:strings.Index(s, "?")]
}

// TestIssuerClusterAdmin: every operator command runs against the
// database of a running two-instance cluster (no socket), issuance goes
// on, and each action is in the audit log stored in the database.
func TestIssuerClusterAdmin(t *testing.T) {
	c := newPGCluster(t, 2, "cl-held")
	metrics, socks := map[string]string{}, map[string]string{}
	for _, n := range []string{"ekem-issuer-a", "ekem-issuer-b"} {
		metrics[n] = freeAddr(t)
		socks[n] = filepath.Join(c.f.dir, n+".sock")
		c.start(t, n, "", "-metrics", metrics[n], "-admin-socket", socks[n])
	}
	first := c.waitEpochAbove(t, 0)
	c.f.waitFleetEpoch(t, first, c.ids...)
	// The metrics show which instance leads: the lease holder, only.
	l := c.waitLeader(t, "ekem-issuer-a", "ekem-issuer-b")
	for n, addr := range metrics {
		want := fmt.Sprintf(`ekem_issuer_leader{instance=%q} 0`, n)
		if n == l.Holder {
			want = fmt.Sprintf(`ekem_issuer_leader{instance=%q} 1`, n)
		}
		var body string
		sysWaitFor(t, n+"'s metrics", func() bool {
			body = httpGet(addr, "/metrics")
			return strings.Contains(body, want)
		})
		if n == l.Holder && !strings.Contains(body, "ekem_epochs_issued_total") {
			t.Errorf("the leader's metrics lack the issuer's own:\n%s", body)
		}
	}
	admin := func(args ...string) string {
		t.Helper()
		full := append(args[:1:1], append([]string{"-store", c.url}, args[1:]...)...)
		code, out, errOut := runBin(t, nil, c.bin.bin, full...)
		if code != 0 {
			t.Fatalf("ekem-issuer %v: exit %d\n%s", full, code, errOut)
		}
		return out
	}
	if out := admin("devices"); !strings.Contains(out, "cl-1") || !strings.Contains(out, "cl-2") {
		t.Fatalf("devices:\n%s", out)
	}
	var d ekissuer.DeviceInfo
	if err := json.Unmarshal([]byte(admin("device", "-json", "cl-1")), &d); err != nil || d.ID != "cl-1" {
		t.Fatalf("device -json cl-1: %+v %v", d, err)
	}
	// Each instance's admin socket: the standby answers reads and refuses
	// writes; the leader answers both.
	standby := "ekem-issuer-a"
	if l.Holder == standby {
		standby = "ekem-issuer-b"
	}
	if code, out, errOut := runBin(t, nil, c.bin.bin, "devices", "-admin-socket", socks[standby]); code != 0 || !strings.Contains(out, "cl-1") {
		t.Fatalf("devices on the standby's socket: %d %s %s", code, out, errOut)
	}
	if code, _, errOut := runBin(t, nil, c.bin.bin, "revoke", "-admin-socket", socks[standby], "-reason", "x", "cl-1"); code == 0 || !strings.Contains(errOut, "standby") {
		t.Fatalf("revoke on the standby's socket: %d %s", code, errOut)
	}
	if code, _, errOut := runBin(t, nil, c.bin.bin, "revoke", "-admin-socket", socks[l.Holder], "-reason", "via leader", "cl-2"); code != 0 {
		t.Fatalf("revoke on the leader's socket: %d %s", code, errOut)
	}
	admin("release", "-reason", "back", "cl-2")
	// approve pins the registration only the running leader holds: a
	// device whose key changed is refused and held, then approved on the
	// leader's socket.
	held := connectAs(t, c.f.b, "cl-held")
	reg1, _ := registration(t, "cl-held")
	publish(t, held, prefix+"reg/cl-held", reg1, true)
	sysWaitFor(t, "cl-held pinned", func() bool {
		code, _, _ := runBin(t, nil, c.bin.bin, "device", "-store", c.url, "cl-held")
		return code == 0
	})
	reg2, secondHash := registration(t, "cl-held")
	publish(t, held, prefix+"reg/cl-held", reg2, true)
	sysWaitFor(t, "the changed key held for approval", func() bool {
		code, _, errOut := runBin(t, nil, c.bin.bin, "approve", "-admin-socket", socks[l.Holder], "-reason", "reflashed", "cl-held")
		if code != 0 && !strings.Contains(errOut, "no registration awaits approval") {
			t.Fatalf("approve: %d %s", code, errOut)
		}
		return code == 0
	})
	if out := admin("device", "cl-held"); !strings.Contains(out, fmt.Sprintf("%x", secondHash)) {
		t.Fatalf("cl-held after approve does not have the approved key %x:\n%s", secondHash, out)
	}
	admin("revoke", "-reason", "stolen", "cl-2")
	admin("release", "-reason", "found", "cl-2")
	admin("reset", "-reason", "reflashed", "cl-2")
	// Issuance goes on for cl-1 meanwhile, and the reset device re-pins.
	e := c.waitEpochAbove(t, c.lastEpoch(t))
	c.f.waitFleetEpoch(t, e, "cl-1")
	var log []ekissuer.AuditEntry
	if err := json.Unmarshal([]byte(admin("audit", "-json")), &log); err != nil {
		t.Fatal(err)
	}
	want := []string{"revoke cl-2 via leader", "release cl-2 back", "approve cl-held reflashed", "revoke cl-2 stolen", "release cl-2 found", "reset cl-2 reflashed"}
	if len(log) != len(want) {
		t.Fatalf("audit log %+v, want %v", log, want)
	}
	for k, w := range want {
		if g := log[k].Action + " " + log[k].Device + " " + log[k].Reason; g != w || log[k].Actor == "" {
			t.Errorf("audit entry %d: %+v, want %s", k, log[k], w)
		}
	}
	c.checkPublished(t, first)
}

// TestIssuerClusterStoreLoss: an older copy of the database put back, and
// an empty database: both instances refuse to start and say why;
// 'ekem-issuer recover' brings the fleet back above every epoch ever
// issued, and no epoch is reused.
func TestIssuerClusterStoreLoss(t *testing.T) {
	for _, older := range []bool{true, false} {
		name := map[bool]string{true: "older copy", false: "empty"}[older]
		t.Run(name, func(t *testing.T) {
			c := newPGCluster(t, 2)
			c.start(t, "ekem-issuer-a", "")
			first := c.waitEpochAbove(t, 0)
			c.f.waitFleetEpoch(t, first, c.ids...)
			c.inst["ekem-issuer-a"].signal(t, syscall.SIGTERM)
			// The operator's backup: a copy of the database.
			backup := "backup_" + dbName(c.url)
			if err := c.pg.Exec("postgres", "CREATE DATABASE "+backup+" TEMPLATE "+dbName(c.url)); err != nil {
				t.Fatal(err)
			}
			c.start(t, "ekem-issuer-a", "")
			c.start(t, "ekem-issuer-b", "")
			e := c.waitEpochAbove(t, c.lastEpoch(t)+1)
			c.f.waitFleetEpoch(t, e, c.ids...)
			for _, n := range []string{"ekem-issuer-a", "ekem-issuer-b"} {
				c.inst[n].signal(t, syscall.SIGTERM)
			}
			// The database is lost: put back the copy, or start empty.
			lost := dbName(c.url)
			restored := "restored_" + lost
			sql := "CREATE DATABASE " + restored
			if older {
				sql += " TEMPLATE " + backup
			}
			if err := c.pg.Exec("postgres", sql); err != nil {
				t.Fatal(err)
			}
			c.url = c.pg.URL(restored)
			c.bin.store = c.url
			for _, n := range []string{"ekem-issuer-a", "ekem-issuer-b"} {
				p := c.start(t, n, "")
				err := waitExit(t, p, faultTimeout)
				if stderr := strings.Join(p.stderr.all(), "\n"); err == nil || !strings.Contains(stderr, "the broker holds epochs this store does not know") ||
					!strings.Contains(stderr, "ekem-issuer recover") {
					t.Fatalf("%s on the %s database: exit %v\n%s", n, name, err, stderr)
				}
			}
			reason := "database " + name
			if older {
				// A first recover SIGKILLed at a random point: its one
				// transaction committed whole or not at all.
				p := c.bin.start(t, "recover", "-reason", "first try")
				time.Sleep(randDuration(1500 * time.Millisecond))
				p.kill(t)
				t.Logf("first recover: killed=%v (after it ended: %v)", p.killedBySignal(), p.err)
			}
			p := c.bin.start(t, "recover", "-reason", reason)
			if err := waitExit(t, p, faultTimeout); err != nil {
				t.Fatalf("recover: %v\n%s\n%s", err, p.stdout.tail(10), p.stderr.tail(10))
			}
			var floor, had uint64
			out := strings.Join(p.stdout.all(), "\n")
			_, err := fmt.Sscanf(out, "recovered: epoch floor %d (the store had %d)", &floor, &had)
			if err != nil && older {
				// The killed run had committed.
				_, err = fmt.Sscanf(out, "nothing to recover: the store's last epoch %d", &floor)
				reason = "first try"
			}
			if err != nil || floor < e {
				t.Fatalf("recover: floor %d, the fleet was at %d: %v\n%s", floor, e, err, out)
			}
			c.start(t, "ekem-issuer-a", "")
			c.start(t, "ekem-issuer-b", "")
			c.f.waitFleetEpoch(t, floor+2, c.ids...)
			for _, id := range c.ids {
				if n := c.f.devices[id].agent.Counters(); n["rejected:wrong_device_key"] > 0 || n["rejected:equivocation"] > 0 {
					t.Errorf("%s rejected tickets after recovery: %v", id, n)
				}
			}
			rec := analysePublished(t, c.mon.messages())
			rec.checkNoReuse(t)
			code := 0
			code, out, _ = runBin(t, nil, c.bin.bin, "audit", "-store", c.url)
			if code != 0 || !strings.Contains(out, "recover") || !strings.Contains(out, reason) {
				t.Errorf("audit log lacks the recovery:\n%s", out)
			}
		})
	}
}
