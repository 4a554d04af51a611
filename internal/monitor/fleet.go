// Package monitor is entropykem's read-only fleet monitor (DESIGN.md
// §Observability): a Fleet model fed with the messages the ekem-monitor
// account reads (schema/PROTOCOL.md §3: status/+, root/+, epoch, ticket/+,
// and the broker's $SYS/#), which shows which device is on which epoch,
// who is lagging or stale, who failed and why, and raises alarms for roots
// that fail signature verification (pkg/accept.VerifyRoot), clones (two
// different acceptances with one seq, §5.6), suspicious reports (a
// conflicting Status without a tag, which changes no device's state) and
// reported equivocation.
//
// The model is pure (no I/O, the clock is a parameter) and O(n) in memory
// (a fixed-size record per device, no payload kept); each message costs
// O(1) plus its decoding. Nothing it receives is trusted beyond what it
// verifies: EpochRoot signatures are checked against the pinned issuer
// keys, and only verified roots set the fleet's epoch; EpochInfo is shown
// as announced, never used to judge devices.
package monitor

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/standing"
	"github.com/entropykem/entropykem/pkg/trust"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Device states in the monitor's view: the standings of pkg/standing,
// from most to least severe, judged from what the broker shows. Each
// device is in exactly one (see stateOf):
//
//   - revoked: the issuer cleared the device's retained ticket (an empty
//     ticket/{id} publish seen live), or, with tickets tracked, the device
//     reported an accepted epoch but has no ticket at all.
//   - quarantined: the monitor saw two different Status messages with one
//     seq (a clone), or, with tickets tracked, the issuer withheld the
//     latest epoch from it (its ticket is older than the latest verified
//     root while the announced epoch says the epoch is fully published).
//   - equivocation: the device reports two tickets for one epoch.
//   - awaiting_approval: the device published a re-enrollment
//     (schema/PROTOCOL.md §7.6) and has not accepted a ticket since.
//   - rejected: the device reports it rejected a ticket or root (Reason
//     says why); it repeats that once per epoch while it lasts.
//   - stale: the device reports its latest ticket expired, or (tickets
//     tracked) its latest ticket's issued_at + ttl_s is past.
//   - current: its last Status (ok or gap) is for the latest verified epoch.
//   - lagging: its last Status is for an earlier epoch (Lag says by how
//     many).
//   - pending: no Status yet, or no verified root yet to compare with.
const (
	StateRevoked          = string(standing.Revoked)
	StateQuarantined      = string(standing.Quarantined)
	StateEquivocation     = string(standing.Equivocation)
	StateAwaitingApproval = string(standing.AwaitingApproval)
	StateRejected         = string(standing.Rejected)
	StateStale            = string(standing.Stale)
	StateCurrent          = string(standing.Current)
	StateLagging          = string(standing.Lagging)
	StatePending          = string(standing.Pending)
)

// States lists every state, most severe first (standing.All).
var States = standing.Strings()

// severity orders states for display: lower is more severe.
var severity = func() map[string]int {
	m := map[string]int{}
	for k, s := range States {
		m[s] = k
	}
	return m
}()

// Bounds on what the model keeps besides the per-device records.
const (
	// MaxRootFailures is how many failed roots are kept for display (all
	// are counted).
	MaxRootFailures = 32
	// MaxRoots is how many verified roots are kept.
	MaxRoots = 64
)

// AlarmKind names an alarm.
type AlarmKind string

// Alarms.
const (
	AlarmRoot  AlarmKind = "root_verification_failed"
	AlarmClone AlarmKind = "clone"
	// AlarmSuspicious: a Status conflicts with the recorded one (one seq,
	// other bytes) and at least one of the two carries no tag (rejected,
	// stale, equivocation): anyone with the device's broker password could
	// have sent it. It changes no device's state (issuer/conflict.go).
	AlarmSuspicious   AlarmKind = "suspicious_status"
	AlarmEquivocation AlarmKind = "equivocation"
	// AlarmIssuerKey: an issuer key announced two different successors.
	AlarmIssuerKey AlarmKind = "issuer_key_conflict"
)

// Alarm is something an operator must look at now.
type Alarm struct {
	Kind   AlarmKind `json:"kind"`
	Topic  string    `json:"topic"`
	Device string    `json:"device,omitempty"`
	Detail string    `json:"detail"`
	At     time.Time `json:"at"`
}

func (a Alarm) String() string {
	s := fmt.Sprintf("ALARM %s on %s", a.Kind, a.Topic)
	if a.Device != "" {
		s += " (device " + a.Device + ")"
	}
	return s + ": " + a.Detail
}

// ticket presence as the monitor knows it.
const (
	ticketUnseen  = 0
	ticketPresent = 1
	ticketCleared = 2
)

// deviceRec is the fixed-size record kept per device.
type deviceRec struct {
	hasStatus  bool
	clone      bool
	suspicious uint32 // conflicting unauthenticated Status reports seen
	ticket     uint8
	state      wire.State
	reason     uint64
	epoch      uint64
	seq        uint64
	time       uint64
	hash       [sha256.Size]byte

	ticketEpoch  uint64
	ticketExpiry uint64
	// reenrolledAt is the created_at of the device's latest
	// re-enrollment (0: none seen, or a plain registration since).
	reenrolledAt uint64
}

// Config configures a Fleet.
type Config struct {
	// Topics names the protocol's topics (default prefix if zero).
	Topics wire.Topics
	// Pins are the pinned issuer public keys. A root must verify under the
	// keys trusted at its epoch: these, and successors learned from
	// verified key rotations on {prefix}/issuer/key/+ (pkg/trust).
	Pins *signature.KeySet
	// TrackTickets says ticket/+ is subscribed, so issuer-side standings
	// (quarantined, revoked) and ticket expiry can be inferred.
	TrackTickets bool
}

// Fleet is the monitor's model. Its methods are safe for concurrent use.
type Fleet struct {
	cfg Config

	trust *trust.Trust      // nil without pins: every root fails
	held  map[string][]byte // key announcements not verified yet, by topic

	mu      sync.Mutex
	devices map[string]*deviceRec
	roots   map[uint64]uint64 // verified epoch → issued_at
	latest  uint64            // highest verified root epoch
	info    *wire.EpochInfo
	failed  []RootFailure
	sys     map[string]float64
	sysText map[string]string
	counts  map[string]uint64
}

// RootFailure is one root that did not verify.
type RootFailure struct {
	Topic string    `json:"topic"`
	Error string    `json:"error"`
	At    time.Time `json:"at"`
}

// NewFleet returns an empty model.
func NewFleet(cfg Config) *Fleet {
	if cfg.Topics.Prefix == "" {
		cfg.Topics = wire.Topics{Prefix: wire.DefaultPrefix}
	}
	tr, _ := trust.New(cfg.Pins) // an error only for no pins
	return &Fleet{
		cfg: cfg, trust: tr, held: map[string][]byte{},
		devices: map[string]*deviceRec{}, roots: map[uint64]uint64{},
		sys: map[string]float64{}, sysText: map[string]string{}, counts: map[string]uint64{},
	}
}

// Counter names of Fleet.Counters.
const (
	CountMessages     = "messages"
	CountMalformed    = "malformed"
	CountRootFailures = "root_failures"
	CountClones       = "clone_alarms"
	CountSuspicious   = "suspicious_reports"
	CountEquivocation = "equivocation_alarms"
	CountKeysLearned  = "issuer_keys_learned"
	CountKeyRejected  = "issuer_key_rejected"
	CountKeyConflicts = "issuer_key_conflicts"
)

// Counters returns a copy of the model's counters (CountMessages and the
// others).
func (f *Fleet) Counters() map[string]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]uint64, len(f.counts))
	for k, v := range f.counts {
		out[k] = v
	}
	return out
}

// Handle takes one message received at now and returns the alarm it
// raises, if any. Malformed input is counted and otherwise ignored; it
// never panics.
func (f *Fleet) Handle(topic string, payload []byte, now time.Time) *Alarm {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts[CountMessages]++
	if strings.HasPrefix(topic, "$SYS/") {
		f.onSys(topic, payload)
		return nil
	}
	// The handlers report an invalid level for their kind.
	switch tp, _ := f.cfg.Topics.Parse(topic); tp.Kind {
	case wire.TopicStatus:
		return f.onStatus(topic, payload, now)
	case wire.TopicRoot:
		return f.onRoot(topic, payload, now)
	case wire.TopicTicket:
		f.onTicket(topic, payload)
	case wire.TopicRegistration:
		f.onRegistration(topic, payload)
	case wire.TopicIssuerKey:
		return f.onIssuerKey(topic, payload, now)
	case wire.TopicEpoch:
		if len(payload) == 0 {
			return nil
		}
		if info, err := wire.ParseEpochInfo(payload); err == nil {
			f.info = info
		} else {
			f.counts[CountMalformed]++
		}
	}
	return nil
}

func (f *Fleet) device(id string) *deviceRec {
	d := f.devices[id]
	if d == nil {
		d = &deviceRec{}
		f.devices[id] = d
	}
	return d
}

func (f *Fleet) onStatus(topic string, payload []byte, now time.Time) *Alarm {
	if len(payload) == 0 {
		return nil // a cleared retained topic
	}
	id, err := f.cfg.Topics.DeviceOf("status", topic)
	if err != nil || len(payload) > wire.MaxStatus {
		f.counts[CountMalformed]++
		return nil
	}
	st, err := wire.ParseStatus(payload)
	if err != nil || st.DeviceID != id {
		f.counts[CountMalformed]++
		return nil
	}
	h := sha256.Sum256(payload)
	d := f.device(id)
	if d.hasStatus && st.Seq <= d.seq {
		if st.Seq == d.seq && h == d.hash {
			return nil // a retained re-delivery
		}
		if !st.State.Accepted() || !d.state.Accepted() {
			// A rejected, stale or equivocation Status carries no tag:
			// the conflict is no evidence of a clone (the issuer,
			// which checks tags, does not quarantine on it either).
			if d.suspicious < ^uint32(0) {
				d.suspicious++
			}
			f.counts[CountSuspicious]++
			return &Alarm{Kind: AlarmSuspicious, Topic: topic, Device: id, At: now,
				Detail: fmt.Sprintf("a %s Status with seq %d conflicts with the recorded %s Status with seq %d; one carries no tag: an account holder may have forged it (the device's state is unchanged)",
					st.State, st.Seq, d.state, d.seq)}
		}
		d.clone = true
		f.counts[CountClones]++
		return &Alarm{Kind: AlarmClone, Topic: topic, Device: id, At: now,
			Detail: fmt.Sprintf("two different Status messages with seq %d (last seq %d): two devices share this id", st.Seq, d.seq)}
	}
	d.hasStatus, d.state, d.reason, d.epoch, d.seq, d.time, d.hash = true, st.State, st.Reason, st.Epoch, st.Seq, st.Time, h
	if st.State == wire.StateEquivocation {
		f.counts[CountEquivocation]++
		return &Alarm{Kind: AlarmEquivocation, Topic: topic, Device: id, At: now,
			Detail: fmt.Sprintf("device reports two different tickets for one epoch (accepted epoch %d)", st.Epoch)}
	}
	return nil
}

func (f *Fleet) onRoot(topic string, payload []byte, now time.Time) *Alarm {
	if len(payload) == 0 {
		return nil // an old epoch's root, cleared by the issuer
	}
	fail := func(why string) *Alarm {
		f.counts[CountRootFailures]++
		if len(f.failed) == MaxRootFailures {
			copy(f.failed, f.failed[1:])
			f.failed = f.failed[:MaxRootFailures-1]
		}
		f.failed = append(f.failed, RootFailure{Topic: topic, Error: why, At: now})
		return &Alarm{Kind: AlarmRoot, Topic: topic, At: now, Detail: why}
	}
	e, err := f.cfg.Topics.EpochOf(topic)
	if err != nil {
		return fail(err.Error())
	}
	if f.trust == nil {
		return fail("no pinned issuer key")
	}
	r, _, err := accept.VerifyRoot(payload, f.trust.KeysAt(e))
	if err != nil {
		return fail(err.Error())
	}
	if r.Epoch != e {
		return fail(fmt.Sprintf("signed root is for epoch %d, published on the topic of epoch %d", r.Epoch, e))
	}
	f.roots[e] = r.IssuedAt
	if e > f.latest {
		f.latest = e
	}
	for len(f.roots) > MaxRoots {
		oldest := e
		for k := range f.roots {
			oldest = min(oldest, k)
		}
		delete(f.roots, oldest)
	}
	return nil
}

// onIssuerKey learns verified issuer key rotations (trust.LearnAll).
// Announcements whose signer is not known yet are held (bounded) and
// retried with the next one, so a chain delivered out of order is learned.
func (f *Fleet) onIssuerKey(topic string, payload []byte, now time.Time) *Alarm {
	if len(payload) == 0 || f.trust == nil {
		delete(f.held, topic)
		return nil
	}
	f.held[topic] = payload
	var alarm *Alarm
	var outcomes []trust.Outcome
	f.trust, outcomes = f.trust.LearnAll(f.held)
	for _, o := range outcomes {
		switch {
		case o.Err == nil:
			f.counts[CountKeysLearned]++
		case errors.Is(o.Err, trust.ErrConflict):
			f.counts[CountKeyConflicts]++
			alarm = &Alarm{Kind: AlarmIssuerKey, Topic: o.Key, At: now, Detail: o.Err.Error()}
		case !o.Retry() && !errors.Is(o.Err, trust.ErrKnown):
			f.counts[CountKeyRejected]++
		}
		if !o.Retry() {
			delete(f.held, o.Key)
		}
	}
	for tp := range f.held {
		if len(f.held) <= trust.MaxHeld {
			break
		}
		f.counts[CountKeyRejected]++
		delete(f.held, tp)
	}
	return alarm
}

// onRegistration notes re-enrollments (schema/PROTOCOL.md §7.6): a device
// that re-enrolled awaits approval until it accepts a ticket. A plain
// registration ends that for a known device; it adds no device (a
// registered device shows up with its first Status).
func (f *Fleet) onRegistration(topic string, payload []byte) {
	if len(payload) == 0 {
		return
	}
	id, err := f.cfg.Topics.DeviceOf("reg", topic)
	if err != nil || len(payload) > wire.MaxRegistration {
		f.counts[CountMalformed]++
		return
	}
	r, err := wire.ParseRegistration(payload)
	if err != nil || r.DeviceID != id {
		f.counts[CountMalformed]++
		return
	}
	switch d := f.devices[id]; {
	case r.Reenroll:
		f.device(id).reenrolledAt = max(r.CreatedAt, 1)
	case d != nil:
		d.reenrolledAt = 0
	}
}

// awaitingApproval: the device re-enrolled and has not reported an
// accepted ticket since (both times are the device's own clock).
func (d *deviceRec) awaitingApproval() bool {
	return d.reenrolledAt > 0 && !(d.hasStatus && d.state.Accepted() && d.time >= d.reenrolledAt)
}

func (f *Fleet) onTicket(topic string, payload []byte) {
	id, err := f.cfg.Topics.DeviceOf("ticket", topic)
	if err != nil {
		f.counts[CountMalformed]++
		return
	}
	if len(payload) == 0 {
		if d := f.devices[id]; d != nil {
			d.ticket, d.ticketEpoch, d.ticketExpiry = ticketCleared, 0, 0
		}
		return
	}
	if len(payload) > wire.MaxTicket {
		f.counts[CountMalformed]++
		return
	}
	_, body, err := wire.ParseTicket(payload)
	if err != nil || body.Aud != id {
		f.counts[CountMalformed]++
		return
	}
	d := f.device(id)
	d.ticket, d.ticketEpoch, d.ticketExpiry = ticketPresent, body.Epoch, body.IssuedAt+body.TTL
}

// sysMetrics maps the Mosquitto $SYS topics the monitor keeps to metric
// names (ekem_broker_...); the set is fixed, so memory is bounded.
var sysMetrics = map[string]string{
	"$SYS/broker/clients/connected":           "clients_connected",
	"$SYS/broker/clients/disconnected":        "clients_disconnected",
	"$SYS/broker/clients/total":               "clients_known",
	"$SYS/broker/clients/maximum":             "clients_maximum",
	"$SYS/broker/messages/received":           "messages_received_total",
	"$SYS/broker/messages/sent":               "messages_sent_total",
	"$SYS/broker/publish/messages/dropped":    "publish_dropped_total",
	"$SYS/broker/bytes/received":              "received_bytes_total",
	"$SYS/broker/bytes/sent":                  "sent_bytes_total",
	"$SYS/broker/retained messages/count":     "retained_messages",
	"$SYS/broker/subscriptions/count":         "subscriptions",
	"$SYS/broker/store/messages/count":        "stored_messages",
	"$SYS/broker/messages/inflight":           "inflight_messages",
	"$SYS/broker/uptime":                      "uptime_seconds",
	"$SYS/broker/load/messages/received/1min": "load_messages_received_1min",
	"$SYS/broker/load/messages/sent/1min":     "load_messages_sent_1min",
}

// sysTexts are the $SYS topics kept as text.
var sysTexts = map[string]string{"$SYS/broker/version": "version"}

// onSys keeps the $SYS figures of sysMetrics; others are ignored.
func (f *Fleet) onSys(topic string, payload []byte) {
	if name, ok := sysTexts[topic]; ok && len(payload) <= 128 {
		f.sysText[name] = string(payload)
		return
	}
	name, ok := sysMetrics[topic]
	if !ok || len(payload) > 64 {
		return
	}
	s := strings.TrimSuffix(strings.TrimSpace(string(payload)), " seconds")
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		f.counts[CountMalformed]++
		return
	}
	f.sys[name] = v
}

// stateOf classifies one device at Unix time t (see the State constants)
// and returns its state, lag and reason.
func (f *Fleet) stateOf(d *deviceRec, t uint64) (state string, lag uint64, reason string) {
	if d.hasStatus && f.latest > d.epoch {
		lag = f.latest - d.epoch
	}
	published := f.info != nil && f.info.Epoch >= f.latest
	track := f.cfg.TrackTickets
	switch {
	case d.ticket == ticketCleared:
		return StateRevoked, lag, "ticket cleared by the issuer"
	case track && d.ticket == ticketUnseen && d.hasStatus && d.epoch > 0:
		return StateRevoked, lag, "no ticket although the device accepted one"
	case d.clone:
		return StateQuarantined, lag, fmt.Sprintf("clone: two Status messages with seq %d", d.seq)
	case track && d.ticket == ticketPresent && published && d.ticketEpoch < f.latest:
		return StateQuarantined, lag, fmt.Sprintf("issuer withheld epochs after %d", d.ticketEpoch)
	case d.hasStatus && d.state == wire.StateEquivocation:
		return StateEquivocation, lag, accept.Reason(d.reason).String()
	case d.awaitingApproval():
		return StateAwaitingApproval, lag, "re-enrolled with a new key; the issuer holds it until an operator approves it"
	case d.hasStatus && d.state == wire.StateRejected:
		return StateRejected, lag, accept.Reason(d.reason).String()
	case d.hasStatus && d.state == wire.StateStale:
		return StateStale, lag, accept.Reason(d.reason).String()
	case track && d.ticket == ticketPresent && t >= d.ticketExpiry:
		return StateStale, lag, "latest ticket expired"
	case !d.hasStatus || f.latest == 0:
		return StatePending, lag, ""
	case lag > 0:
		return StateLagging, lag, ""
	}
	return StateCurrent, 0, ""
}

// Totals counts devices by state at now, O(devices), without sorting.
func (f *Fleet) Totals(now time.Time) (byState map[string]int, maxLag uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.totalsLocked(unix(now))
}

func (f *Fleet) totalsLocked(t uint64) (map[string]int, uint64) {
	out := make(map[string]int, len(States))
	for _, s := range States {
		out[s] = 0
	}
	var maxLag uint64
	for _, d := range f.devices {
		s, lag, _ := f.stateOf(d, t)
		out[s]++
		maxLag = max(maxLag, lag)
	}
	return out, maxLag
}

// Row is one device in a Snapshot.
type Row struct {
	ID string `json:"id"`
	// Epoch is the epoch of the device's latest accepted ticket, from its
	// last Status (0: none or no Status).
	Epoch uint64 `json:"epoch"`
	// Lag is how many epochs Epoch is behind the latest verified root.
	Lag uint64 `json:"lag"`
	// LastSeen is the time in the device's last Status (its own clock).
	LastSeen    *time.Time `json:"last_seen,omitempty"`
	State       string     `json:"state"`
	Reason      string     `json:"reason,omitempty"`
	Seq         uint64     `json:"seq"`
	TicketEpoch uint64     `json:"ticket_epoch,omitempty"`
	// Suspicious counts conflicting Status reports without a tag seen for
	// this device (AlarmSuspicious); they do not change State.
	Suspicious uint32 `json:"suspicious,omitempty"`
}

// Snapshot is the fleet at one moment.
type Snapshot struct {
	At time.Time `json:"at"`
	// Epoch is the latest epoch whose root verified under the pinned keys
	// (0: none seen); EpochIssuedAt is that root's issued_at.
	Epoch         uint64     `json:"epoch"`
	EpochIssuedAt *time.Time `json:"epoch_issued_at,omitempty"`
	// Announced is the unsigned EpochInfo (informational only).
	Announced *Announced `json:"announced,omitempty"`
	Devices   []Row      `json:"devices"`
	// Totals counts devices by state; every state is present.
	Totals       map[string]int     `json:"totals"`
	MaxLag       uint64             `json:"max_lag"`
	RootFailures []RootFailure      `json:"root_failures"`
	Counters     map[string]uint64  `json:"counters"`
	Broker       map[string]float64 `json:"broker,omitempty"`
	BrokerInfo   map[string]string  `json:"broker_info,omitempty"`
}

// Announced is the EpochInfo as published (unsigned).
type Announced struct {
	Epoch   uint64    `json:"epoch"`
	PeriodS uint64    `json:"period_s"`
	NextAt  time.Time `json:"next_at"`
}

// Snapshot returns every device (most severe state first, then by id)
// and the fleet's totals at now.
func (f *Fleet) Snapshot(now time.Time) Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := unix(now)
	s := Snapshot{At: now.UTC(), Epoch: f.latest, Devices: make([]Row, 0, len(f.devices)),
		RootFailures: append([]RootFailure{}, f.failed...), Counters: map[string]uint64{},
		Broker: map[string]float64{}, BrokerInfo: map[string]string{}}
	if at, ok := f.roots[f.latest]; ok && f.latest > 0 {
		tt := time.Unix(int64(at), 0).UTC()
		s.EpochIssuedAt = &tt
	}
	if f.info != nil {
		s.Announced = &Announced{Epoch: f.info.Epoch, PeriodS: f.info.PeriodS, NextAt: time.Unix(int64(f.info.NextAt), 0).UTC()}
	}
	for id, d := range f.devices {
		st, lag, reason := f.stateOf(d, t)
		r := Row{ID: id, Epoch: d.epoch, Lag: lag, State: st, Reason: reason, Seq: d.seq, TicketEpoch: d.ticketEpoch, Suspicious: d.suspicious}
		if d.hasStatus {
			ls := time.Unix(int64(d.time), 0).UTC()
			r.LastSeen = &ls
		}
		s.Devices = append(s.Devices, r)
	}
	sort.Slice(s.Devices, func(a, b int) bool {
		x, y := s.Devices[a], s.Devices[b]
		if severity[x.State] != severity[y.State] {
			return severity[x.State] < severity[y.State]
		}
		return x.ID < y.ID
	})
	s.Totals, s.MaxLag = f.totalsLocked(t)
	for k, v := range f.counts {
		s.Counters[k] = v
	}
	for k, v := range f.sys {
		s.Broker[k] = v
	}
	for k, v := range f.sysText {
		s.BrokerInfo[k] = v
	}
	return s
}

func unix(t time.Time) uint64 {
	if s := t.Unix(); s > 0 {
		return uint64(s)
	}
	return 0
}
