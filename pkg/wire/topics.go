package wire

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/entropykem/entropykem/pkg/signature"
)

// DefaultPrefix is the default topic prefix (schema/PROTOCOL.md §Topics).
const DefaultPrefix = "ekem/v1"

// Topics names the protocol's MQTT topics under one prefix.
type Topics struct{ Prefix string }

// NewTopics validates prefix (non-empty, no wildcards, no leading or
// trailing '/') and returns its Topics.
func NewTopics(prefix string) (Topics, error) {
	if prefix == "" || strings.ContainsAny(prefix, "+#\x00") || strings.HasPrefix(prefix, "/") || strings.HasSuffix(prefix, "/") || strings.HasPrefix(prefix, "$") {
		return Topics{}, fmt.Errorf("wire: invalid topic prefix %q: non-empty, no wildcards, no leading '$' or '/', no trailing '/'", prefix)
	}
	return Topics{Prefix: prefix}, nil
}

func (t Topics) Registration(id string) string { return t.Prefix + "/reg/" + id }
func (t Topics) Ticket(id string) string       { return t.Prefix + "/ticket/" + id }
func (t Topics) Status(id string) string       { return t.Prefix + "/status/" + id }
func (t Topics) Root(epoch uint64) string {
	return t.Prefix + "/root/" + strconv.FormatUint(epoch, 10)
}
func (t Topics) Epoch() string  { return t.Prefix + "/epoch" }
func (t Topics) Online() string { return t.Prefix + "/issuer/online" }

// IssuerKey is where the KeyRotation announcing the issuer key with this
// kid (signature.KIDSize bytes) is retained: the kid in lowercase hex.
func (t Topics) IssuerKey(kid []byte) string {
	return t.Prefix + "/issuer/key/" + hex.EncodeToString(kid)
}

// Subscription filters.
func (t Topics) AllRegistrations() string { return t.Prefix + "/reg/+" }
func (t Topics) AllStatuses() string      { return t.Prefix + "/status/+" }
func (t Topics) AllTickets() string       { return t.Prefix + "/ticket/+" }
func (t Topics) AllRoots() string         { return t.Prefix + "/root/+" }
func (t Topics) AllIssuerKeys() string    { return t.Prefix + "/issuer/key/+" }

// DeviceOf returns the {device_id} level of a reg, ticket or status topic
// of kind ("reg", "ticket", "status"), validated by Parse.
func (t Topics) DeviceOf(kind, topic string) (string, error) {
	p, err := t.Parse(topic)
	switch {
	case p.Kind.String() != kind || (kind != "reg" && kind != "ticket" && kind != "status"):
		return "", fmt.Errorf("wire: topic %q is not under %s/%s/", topic, t.Prefix, kind)
	case err != nil:
		return "", err
	}
	return p.DeviceID, nil
}

// EpochOf returns the {epoch} level of a root topic, validated by Parse.
func (t Topics) EpochOf(topic string) (uint64, error) {
	p, err := t.Parse(topic)
	switch {
	case p.Kind != TopicRoot:
		return 0, fmt.Errorf("wire: topic %q is not under %s/root/", topic, t.Prefix)
	case err != nil:
		return 0, err
	}
	return p.Epoch, nil
}

// TopicKind names one row of the topic table (schema/PROTOCOL.md §3).
type TopicKind uint8

// Topic kinds. TopicUnknown is a topic outside the table (or outside the
// prefix).
const (
	TopicUnknown TopicKind = iota
	TopicRegistration
	TopicTicket
	TopicStatus
	TopicRoot
	TopicEpoch
	TopicOnline
	TopicIssuerKey
)

var topicKindNames = [...]string{"unknown", "reg", "ticket", "status", "root", "epoch", "online", "issuer_key"}

// String returns the kind's level name ("reg", "ticket", ...).
func (k TopicKind) String() string {
	if int(k) < len(topicKindNames) {
		return topicKindNames[k]
	}
	return "unknown"
}

// ErrTopic is wrapped by Parse's error for a topic outside the table or
// with an invalid variable level.
var ErrTopic = errors.New("wire: not a protocol topic")

// Topic is a parsed protocol topic: its kind and the variable level the
// kind has (DeviceID of reg, ticket and status; Epoch of root; KID of
// issuer/key).
type Topic struct {
	Kind     TopicKind
	DeviceID string
	Epoch    uint64
	KID      []byte
}

// Parse is the one place a received topic is taken apart: it returns the
// row of schema/PROTOCOL.md §3 that topic is under, and its variable level
// validated (a device_id by ValidateDeviceID, a canonical decimal epoch, a
// kid of 16 lowercase hex digits). Every valid topic is what the builder
// of its kind makes of its level, byte for byte. A topic under a known
// row whose level is invalid returns that Kind with an error wrapping
// ErrTopic, so that a receiver can report it for its kind; any other topic
// returns TopicUnknown and ErrTopic.
func (t Topics) Parse(topic string) (Topic, error) {
	rest, ok := strings.CutPrefix(topic, t.Prefix+"/")
	if !ok {
		return Topic{}, fmt.Errorf("%w: %q is not under %s/", ErrTopic, topic, t.Prefix)
	}
	switch rest {
	case "epoch":
		return Topic{Kind: TopicEpoch}, nil
	case "issuer/online":
		return Topic{Kind: TopicOnline}, nil
	}
	for _, k := range []TopicKind{TopicRegistration, TopicTicket, TopicStatus} {
		if id, ok := strings.CutPrefix(rest, k.String()+"/"); ok {
			if err := ValidateDeviceID(id); err != nil {
				return Topic{Kind: k}, fmt.Errorf("%w: %q: %w", ErrTopic, topic, err)
			}
			return Topic{Kind: k, DeviceID: id}, nil
		}
	}
	if s, ok := strings.CutPrefix(rest, "root/"); ok {
		e, err := strconv.ParseUint(s, 10, 64)
		if err != nil || e < 1 || e > MaxEpoch || strconv.FormatUint(e, 10) != s {
			return Topic{Kind: TopicRoot}, fmt.Errorf("%w: %q: epoch level is not a canonical decimal epoch", ErrTopic, topic)
		}
		return Topic{Kind: TopicRoot, Epoch: e}, nil
	}
	if s, ok := strings.CutPrefix(rest, "issuer/key/"); ok {
		kid, err := hex.DecodeString(s)
		if err != nil || len(kid) != signature.KIDSize || hex.EncodeToString(kid) != s {
			return Topic{Kind: TopicIssuerKey}, fmt.Errorf("%w: %q: kid level is not %d lowercase hex digits", ErrTopic, topic, 2*signature.KIDSize)
		}
		return Topic{Kind: TopicIssuerKey, KID: kid}, nil
	}
	return Topic{}, fmt.Errorf("%w: %q", ErrTopic, topic)
}
