package issuer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/internal/mqttc"
	"github.com/entropykem/entropykem/pkg/accept"
	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// Fencing against the broker (DESIGN "Issuer state"): the broker is a
// cache of the store, so the roots it holds can only be at or below the
// store's last epoch. A root signed by one of this issuer's keys at an
// epoch above it proves that the store lost epochs it issued: it was lost
// (an empty store), or put back from an older copy. Issuing from it would
// sign a second, different root for an epoch number devices already
// accepted, encapsulated to keys they have deleted: every device would
// refuse every later ticket. So the issuer refuses to start, and
// Recover rebuilds the store from what the broker holds.

// ErrBrokerAhead: the broker holds a root this issuer signed that the
// store does not have. Nothing was published or stored.
var ErrBrokerAhead = errors.New("issuer: the broker holds epochs this store does not know")

// brokerView is what the broker holds of this issuer's epochs.
type brokerView struct {
	// roots are the retained roots that verify under the issuer's keys,
	// by epoch.
	roots map[uint64][]byte
	// highest is the highest epoch of those roots, 0 if none.
	highest uint64
	// info is the retained EpochInfo (unsigned: the broker's ACL lets
	// only the issuer write it), nil if none or malformed.
	info      *wire.EpochInfo
	infoBytes []byte
	// foreign counts retained roots that do not verify under the
	// issuer's keys (another issuer's, or garbage).
	foreign int
	// regs and statuses are the retained registrations and Statuses by
	// topic device id (only Recover reads them).
	regs, statuses map[string][]byte
}

// issuerKeys is every public key this issuer signs or signed with that it
// knows: Key, NextKey and the keys of the stored rotations.
func (i *Issuer) issuerKeys() (*signature.KeySet, error) {
	keys := []*signature.PublicKey{i.cfg.Key.Public()}
	if i.cfg.NextKey != nil {
		keys = append(keys, i.cfg.NextKey.Public())
	}
	for _, r := range i.chain {
		keys = append(keys, r.New)
	}
	uniq := keys[:0]
	seen := map[string]bool{}
	for _, k := range keys {
		if !seen[string(k.KID())] {
			seen[string(k.KID())] = true
			uniq = append(uniq, k)
		}
	}
	return signature.NewKeySet(uniq...)
}

// mqttOptions are the broker options of every connection of the issuer.
func (i *Issuer) mqttOptions() mqttc.Options {
	return mqttc.Options{Broker: i.cfg.Broker, ClientID: i.cfg.ClientID, Username: i.cfg.Username,
		Password: i.cfg.Password, TLS: i.cfg.TLS, Timeout: i.cfg.Timeout, Logger: i.log, Backoff: mqttc.ServiceBackoff}
}

// readBroker reads the retained roots and EpochInfo (and, with devices,
// every retained registration and Status) and verifies each root under
// the issuer's keys.
func (i *Issuer) readBroker(ctx context.Context, devices bool) (*brokerView, error) {
	filters := []string{i.topics.AllRoots(), i.topics.Epoch()}
	if devices {
		filters = append(filters, i.topics.AllRegistrations(), i.topics.AllStatuses())
	}
	msgs, err := mqttc.FetchRetained(ctx, i.mqttOptions(), filters, i.cfg.BrokerQuiet)
	if err != nil {
		return nil, fmt.Errorf("issuer: read the broker's retained epochs: %w", err)
	}
	pins, err := i.issuerKeys()
	if err != nil {
		return nil, err
	}
	v := &brokerView{roots: map[uint64][]byte{}, regs: map[string][]byte{}, statuses: map[string][]byte{}}
	for _, m := range msgs {
		switch {
		case m.Topic == i.topics.Epoch():
			if info, err := wire.ParseEpochInfo(m.Payload); err == nil {
				v.info, v.infoBytes = info, m.Payload
			}
		case devices && topicIs(i.topics.AllRegistrations(), m.Topic):
			if id, err := i.topics.DeviceOf("reg", m.Topic); err == nil {
				v.regs[id] = m.Payload
			}
		case devices && topicIs(i.topics.AllStatuses(), m.Topic):
			if id, err := i.topics.DeviceOf("status", m.Topic); err == nil {
				v.statuses[id] = m.Payload
			}
		default:
			e, err := i.topics.EpochOf(m.Topic)
			if err != nil {
				continue
			}
			root, _, err := accept.VerifyRoot(m.Payload, pins)
			if err != nil || root.Epoch != e {
				v.foreign++
				continue
			}
			v.roots[e] = m.Payload
			v.highest = max(v.highest, e)
		}
	}
	return v, nil
}

// topicIs reports whether topic is one level below filter's "+" level.
func topicIs(filter, topic string) bool {
	prefix := filter[:len(filter)-1]
	return len(topic) > len(prefix) && topic[:len(prefix)] == prefix
}

// fence refuses to start when the broker holds a root of this issuer at an
// epoch above the store's last epoch, or a different root of this
// issuer for an epoch the store holds (see ErrBrokerAhead).
func (i *Issuer) fence(ctx context.Context) error {
	v, err := i.readBroker(ctx, false)
	if err != nil {
		return err
	}
	var last uint64
	stored := map[uint64][]byte{}
	err = i.store.View(func(tx ReadTx) error {
		var err error
		if last, err = tx.LastEpoch(); err != nil {
			return err
		}
		roots, err := tx.Roots()
		for _, r := range roots {
			stored[r.Epoch] = r.Root
		}
		return err
	})
	if err != nil {
		return err
	}
	if last > 0 && len(v.roots) == 0 {
		i.log.Warn("the broker holds no root of this issuer although the store has issued epochs: the broker lost its retained messages, or its ACL does not let the issuer read root/+ (broker-config/acl); the issuer republishes them from the store",
			"reason", "broker_no_roots", "last_epoch", last)
	}
	if v.foreign > 0 {
		i.log.Warn("the broker holds epoch roots not signed by this issuer's keys; they are ignored",
			"reason", "foreign_roots", "roots", v.foreign)
	}
	if v.highest > last {
		what := "restored from an older copy, or lost epochs"
		if last == 0 && i.storeEmpty() {
			what = "empty: it was lost or deleted"
		}
		i.count(cFencedStarts, 1)
		return fmt.Errorf("%w: the broker %s holds the root of epoch %d signed by this issuer, but the store %s ends at epoch %d "+
			"(the store is %s); issuing from it would reuse epoch numbers and strand every device "+
			"(hint: run 'ekem-issuer recover' with the same flags to re-pin the devices from the broker and continue above epoch %d; README \"Backups and recovery\")",
			ErrBrokerAhead, i.cfg.Broker, v.highest, i.store.Name(), last, what, v.highest)
	}
	for e, b := range v.roots {
		if s, ok := stored[e]; ok && !bytes.Equal(s, b) {
			i.count(cFencedStarts, 1)
			return fmt.Errorf("%w: the broker %s holds a root of epoch %d signed by this issuer that differs from the store's: "+
				"two stores issued that epoch (hint: run only one issuer on this prefix, from the newest store; see README \"Backups and recovery\")",
				ErrBrokerAhead, i.cfg.Broker, e)
		}
	}
	if v.info != nil && v.info.Epoch > last {
		i.log.Warn("the broker's EpochInfo names an epoch above the store's last, with no root of this issuer to prove it",
			"reason", "epoch_info_ahead", "broker_epoch", v.info.Epoch, "last_epoch", last)
	}
	return nil
}

// storeEmpty reports whether the store holds no device at all.
func (i *Issuer) storeEmpty() bool {
	found := errors.New("found")
	err := i.store.View(func(tx ReadTx) error {
		return tx.Devices(func(*record) error { return found })
	})
	return err == nil
}

// RecoverReport says what Recover did.
type RecoverReport struct {
	// StoreEpoch is the store's last epoch before; BrokerEpoch the highest
	// epoch the broker showed; Floor the new last epoch (the next epoch
	// issued is Floor+1). Recovered is false when the store was not
	// behind the broker, and nothing changed.
	StoreEpoch, BrokerEpoch, Floor uint64
	Recovered                      bool
	// FromStatus, FromRegistration count the devices re-pinned from their
	// latest Status's next key and from their Registration; Kept lists the
	// stored devices the broker holds nothing of (left as stored);
	// Refused the devices whose retained messages were unusable, with why.
	FromStatus, FromRegistration int
	Kept                         []string
	Refused                      map[string]string
}

// Recover rebuilds a lost or restored store from the broker (DESIGN
// "Issuer state"; README "Backups and recovery"). It reads every retained
// root, the EpochInfo, and every device's retained Registration and Status
// (which the broker's ACL authenticates, as for first use). If the broker
// shows a root of this issuer above the store's last epoch, it sets the
// epoch floor there, so the next epoch is above every epoch ever issued,
// and re-pins each device: from the next key its latest retained ok or gap
// Status announced (with that Status's epoch and ticket_hash as the chain
// head, so the device accepts the next ticket and reports the gap), or
// else from its Registration. A revoked or quarantined device stays so.
// Everything, with the audit entry, is one store transaction: interrupted,
// Recover changes nothing and can be run again; run again after success,
// it finds the store level with the broker and changes nothing.
//
// The issuer must not be running: Recover is for a stopped store, before
// Start.
func (a OnlineAdmin) Recover(ctx context.Context, op Operator) (*RecoverReport, error) {
	if err := op.check(); err != nil {
		return nil, err
	}
	a.i.mu.Lock()
	defer a.i.mu.Unlock()
	v, err := a.i.readBroker(ctx, true)
	if err != nil {
		return nil, err
	}
	rep := &RecoverReport{BrokerEpoch: v.highest, Refused: map[string]string{}}
	if v.info != nil {
		rep.BrokerEpoch = max(rep.BrokerEpoch, v.info.Epoch)
	}
	err = a.i.store.Update(func(tx Tx) error {
		last, err := tx.LastEpoch()
		if err != nil {
			return err
		}
		rep.StoreEpoch, rep.Floor = last, last
		if rep.BrokerEpoch <= last {
			return nil // level with the broker: nothing to recover
		}
		rep.Floor, rep.Recovered = rep.BrokerEpoch, true
		var roots []StoredRoot
		for e, b := range v.roots {
			roots = append(roots, StoredRoot{Epoch: e, Root: b})
		}
		sort.Slice(roots, func(a, b int) bool { return roots[a].Epoch < roots[b].Epoch })
		var info []byte
		if v.info != nil && v.info.Epoch == rep.Floor {
			info = v.infoBytes
		}
		if err := tx.Recover(rep.Floor, roots, info); err != nil {
			return err
		}
		if err := a.i.repin(tx, v, rep); err != nil {
			return err
		}
		detail := fmt.Sprintf("epoch floor %d (store had %d, broker %d); re-pinned %d from Status, %d from Registration; %d kept as stored; %d refused",
			rep.Floor, rep.StoreEpoch, rep.BrokerEpoch, rep.FromStatus, rep.FromRegistration, len(rep.Kept), len(rep.Refused))
		return tx.AppendAudit(AuditEntry{Time: unixSeconds(a.i.cfg.Now()), Actor: op.Actor, Action: "recover",
			Reason: op.Reason, Detail: detail})
	})
	if err != nil {
		return nil, err
	}
	if rep.Recovered {
		a.i.log.Warn("store recovered from the broker", "floor", rep.Floor, "store_epoch", rep.StoreEpoch,
			"from_status", rep.FromStatus, "from_registration", rep.FromRegistration, "kept", len(rep.Kept),
			"refused", len(rep.Refused), "actor", op.Actor)
	}
	return rep, nil
}

// repin re-pins every device the broker holds messages of (see Recover).
func (i *Issuer) repin(tx Tx, v *brokerView, rep *RecoverReport) error {
	ids := map[string]bool{}
	for id := range v.regs {
		ids[id] = true
	}
	for id := range v.statuses {
		ids[id] = true
	}
	if err := tx.Devices(func(r *record) error {
		if !ids[r.ID] {
			rep.Kept = append(rep.Kept, r.ID)
		}
		return nil
	}); err != nil {
		return err
	}
	sorted := make([]string, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	sort.Strings(sorted)
	for _, id := range sorted {
		old, err := tx.Device(id)
		if err != nil {
			return err
		}
		r, from, why := i.recovered(id, old, v.regs[id], v.statuses[id])
		switch from {
		case "":
			rep.Refused[id] = why
			i.log.Warn("recover: device not re-pinned", "reason", "recover_refused", "device", id, "why", why)
			continue
		case "status":
			rep.FromStatus++
		default:
			rep.FromRegistration++
		}
		if err := tx.PutDevice(r); err != nil {
			return err
		}
	}
	return nil
}

// recovered builds device id's record from its retained Registration and
// Status, keeping old's standing (revoked, quarantined), pin time,
// enrollment and cohort membership. from
// is "status", "registration", or "" with why when neither is usable.
func (i *Issuer) recovered(id string, old *record, regMsg, stMsg []byte) (r *record, from, why string) {
	if brokerconfig.IsReservedName(id) || wire.ValidateDeviceID(id) != nil {
		return nil, "", "reserved or invalid device id"
	}
	r = &record{ID: id, State: stateActive, PinnedAt: unixSeconds(i.cfg.Now())}
	if old != nil {
		r.State, r.PinnedAt = old.State, old.PinnedAt
		r.Enrolled, r.EnrolledKeyHash = old.Enrolled, old.EnrolledKeyHash
		r.Cohort = old.Cohort // membership is configuration, not state the broker holds
	}
	var reg *wire.Registration
	if regMsg != nil {
		if g, err := wire.ParseRegistration(regMsg); err == nil && g.DeviceID == id && i.validKey(g.KEMAlg, g.PublicKey) {
			reg = g
			r.RegAlg, r.RegKey = g.KEMAlg, bytes.Clone(g.PublicKey)
		}
	}
	if stMsg != nil {
		st, err := wire.ParseStatus(stMsg)
		if err == nil && st.DeviceID == id {
			// The Status's chain head links the next ticket (prev), and
			// the retained Status itself is the clone-detection baseline.
			r.Epoch, r.TicketHash = st.Epoch, bytes.Clone(st.TicketHash)
			r.HasStatus, r.StatusSeq, r.StatusHash = true, st.Seq, sum256(stMsg)
			r.StatusState, r.StatusReason, r.StatusEpoch = uint64(st.State), st.Reason, st.Epoch
			if st.State.Accepted() && i.validKey(st.NextAlg, st.NextPK) {
				r.NextAlg, r.NextKey = st.NextAlg, bytes.Clone(st.NextPK)
				if reg == nil {
					// No usable registration: the Status's key is the pin.
					r.RegAlg, r.RegKey = st.NextAlg, bytes.Clone(st.NextPK)
				}
				return r, "status", ""
			}
		}
	}
	if reg != nil {
		return r, "registration", ""
	}
	return nil, "", "no valid retained Registration, and no ok or gap Status with a valid next key"
}

// validKey reports whether key is a valid encapsulation key of an allowed
// KEM.
func (i *Issuer) validKey(alg kem.ID, key []byte) bool {
	if !i.cfg.kemAllowed(alg) {
		return false
	}
	sch, err := kem.Lookup(alg)
	if err != nil {
		return false
	}
	_, err = sch.ParsePublicKey(key)
	return err == nil
}
