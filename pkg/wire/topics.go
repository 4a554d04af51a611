package wire

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
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
func (t Topics) AllRoots() string         { return t.Prefix + "/root/+" }
func (t Topics) AllIssuerKeys() string    { return t.Prefix + "/issuer/key/+" }

// DeviceOf returns the {device_id} level of a reg, ticket or status topic
// of kind ("reg", "ticket", "status"), validated.
func (t Topics) DeviceOf(kind, topic string) (string, error) {
	id, ok := strings.CutPrefix(topic, t.Prefix+"/"+kind+"/")
	if !ok {
		return "", fmt.Errorf("wire: topic %q is not under %s/%s/", topic, t.Prefix, kind)
	}
	if err := ValidateDeviceID(id); err != nil {
		return "", fmt.Errorf("wire: topic %q: %w", topic, err)
	}
	return id, nil
}

// EpochOf returns the {epoch} level of a root topic, validated.
func (t Topics) EpochOf(topic string) (uint64, error) {
	s, ok := strings.CutPrefix(topic, t.Prefix+"/root/")
	if !ok {
		return 0, fmt.Errorf("wire: topic %q is not under %s/root/", topic, t.Prefix)
	}
	e, err := strconv.ParseUint(s, 10, 64)
	if err != nil || e < 1 || e > MaxEpoch || strconv.FormatUint(e, 10) != s {
		return 0, fmt.Errorf("wire: topic %q: epoch level is not a canonical decimal epoch", topic)
	}
	return e, nil
}
