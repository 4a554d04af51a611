package issuer

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"testing"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/keyschedule"
)

// TestRecordSecretsForms checks both stored forms of a ticket's secrets:
// the prk written now, and the expanded keys of records written before it,
// which must keep verifying the device's tags until its next ticket.
func TestRecordSecretsForms(t *testing.T) {
	ss, th, pkh := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{9}, 32)
	sec, err := keyschedule.DeriveTicketSecrets(ss, th)
	if err != nil {
		t.Fatal(err)
	}
	expand := func(label string) []byte {
		k, err := hkdf.Key(sha256.New, ss, th, label, 32)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	current := &record{ID: "dev-1", TicketHash: th}
	current.setTicketSecrets(sec)
	legacy := &record{ID: "dev-1", TicketHash: th, LegacyConfirm: sec.Confirm(),
		LegacyNextKeyMAC: expand(keyschedule.LabelNextKey), LegacyRekeyMAC: expand(keyschedule.LabelRekey)}
	for name, r := range map[string]*record{"prk": current, "legacy": legacy} {
		// Through the store's encoding, as the issuer reads it.
		b, err := cbor.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeRecord(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		c := back.secrets()
		if c == nil {
			t.Fatalf("%s: record has no secrets", name)
		}
		if !c.CheckConfirm(sec.Confirm()) || !c.CheckNextKey(pkh, sec.NextKeyTag(pkh)) || !c.CheckRekey(pkh, sec.RekeyTag(pkh)) {
			t.Fatalf("%s: a good tag is refused", name)
		}
		bad := bytes.Repeat([]byte{7}, 32)
		if c.CheckConfirm(bad) || c.CheckNextKey(pkh, bad) || c.CheckRekey(pkh, sec.NextKeyTag(pkh)) {
			t.Fatalf("%s: a wrong tag is accepted", name)
		}
		back.clearTicketSecrets()
		if back.secrets() != nil {
			t.Fatalf("%s: secrets survive clearTicketSecrets", name)
		}
	}
	// A new ticket's secrets replace the legacy fields.
	legacy.setTicketSecrets(sec)
	if legacy.LegacyConfirm != nil || legacy.LegacyNextKeyMAC != nil || legacy.LegacyRekeyMAC != nil {
		t.Fatal("legacy secrets kept beside the prk")
	}
}
