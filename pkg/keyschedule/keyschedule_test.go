package keyschedule

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/entropykem/entropykem/pkg/cohort"
)

// hkdfByHand is RFC 5869 written out with HMAC alone (L <= 32), so the
// derivations are checked against an implementation other than crypto/hkdf.
func hkdfByHand(ikm, salt []byte, info string) []byte {
	if salt == nil {
		salt = make([]byte, 32)
	}
	prk := hmacByHand(salt, ikm)
	return hmacByHand(prk, append([]byte(info), 0x01))
}

func hmacByHand(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func TestHKDFByHandMatchesRFC5869(t *testing.T) {
	// RFC 5869 Appendix A.1 (first 32 bytes of OKM; info as bytes).
	ikm := fill(22, 0x0b)
	salt, _ := hex.DecodeString("000102030405060708090a0b0c")
	info, _ := hex.DecodeString("f0f1f2f3f4f5f6f7f8f9")
	want := "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
	if got := hex.EncodeToString(hkdfByHand(ikm, salt, string(info))); got != want {
		t.Fatalf("reference HKDF is wrong: %s", got)
	}
}

func TestDerivations(t *testing.T) {
	ss, th, secret := fill(32, 1), fill(32, 2), fill(32, 3)
	c, err := cohort.NewSoftware(secret)
	if err != nil {
		t.Fatal(err)
	}
	mix, err := CohortMix(c, th)
	if err != nil {
		t.Fatal(err)
	}
	if want := hmacByHand(secret, append([]byte("ekem/v1 cohort"), th...)); !bytes.Equal(mix, want) {
		t.Fatal("cohort_mix")
	}
	ek, err := EpochKey(ss, mix, 258, "telemetry", "plant-7")
	if err != nil {
		t.Fatal(err)
	}
	salt := []byte{0, 0, 0, 0, 0, 0, 1, 2}
	if want := hkdfByHand(append(bytes.Clone(ss), mix...), salt, "telemetry;plant-7;258"); !bytes.Equal(ek, want) {
		t.Fatal("key_epoch")
	}
	sec, err := DeriveTicketSecrets(ss, th)
	if err != nil {
		t.Fatal(err)
	}
	if want := hmacByHand(hkdfByHand(ss, th, "ekem/v1 confirm"), th); !bytes.Equal(sec.Confirm(), want) || !sec.CheckConfirm(want) {
		t.Fatal("confirm")
	}
	pkh := fill(32, 9)
	if want := hmacByHand(hkdfByHand(ss, th, "ekem/v1 next-key"), pkh); !bytes.Equal(sec.NextKeyTag(pkh), want) || !sec.CheckNextKey(pkh, want) {
		t.Fatal("next_tag")
	}
	if want := hmacByHand(hkdfByHand(ss, th, "ekem/v1 rekey"), pkh); !bytes.Equal(sec.RekeyTag(pkh), want) || !sec.CheckRekey(pkh, want) {
		t.Fatal("rekey tag")
	}
	sk, err := StateKey(c, "dev-01")
	if err != nil {
		t.Fatal(err)
	}
	if want := hmacByHand(secret, []byte("ekem/v1 state-keydev-01")); !bytes.Equal(sk, want) {
		t.Fatal("state key")
	}
}

func TestTagsAreBoundToTheirInputs(t *testing.T) {
	ss, th := fill(32, 1), fill(32, 2)
	sec, _ := DeriveTicketSecrets(ss, th)
	other, _ := DeriveTicketSecrets(ss, fill(32, 4))
	if other.CheckConfirm(sec.Confirm()) {
		t.Fatal("confirm accepted for another ticket")
	}
	pkh := fill(32, 9)
	tag := sec.NextKeyTag(pkh)
	if sec.CheckNextKey(fill(32, 8), tag) || other.CheckNextKey(pkh, tag) {
		t.Fatal("next-key tag accepted for another key or ticket")
	}
	if sec.CheckRekey(pkh, tag) {
		t.Fatal("a next-key tag passes as a re-key tag: labels must separate them")
	}
	a, _ := EpochKey(ss, th, 1, "p", "g")
	for _, b := range [][]byte{
		must(EpochKey(ss, th, 2, "p", "g")),
		must(EpochKey(ss, th, 1, "q", "g")),
		must(EpochKey(ss, th, 1, "p", "h")),
		must(EpochKey(th, ss, 1, "p", "g")),
	} {
		if bytes.Equal(a, b) {
			t.Fatal("key_epoch does not depend on every input")
		}
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestBadSizes(t *testing.T) {
	c, _ := cohort.NewSoftware(fill(32, 3))
	if _, err := CohortMix(c, fill(31, 0)); err == nil {
		t.Fatal("short ticket hash accepted")
	}
	if _, err := EpochKey(fill(31, 0), fill(32, 0), 1, "p", "g"); err == nil {
		t.Fatal("short ss accepted")
	}
	if _, err := DeriveTicketSecrets(fill(32, 0), fill(33, 0)); err == nil {
		t.Fatal("long ticket hash accepted")
	}
	if _, err := TicketSecretsFromPRK(fill(31, 0), fill(32, 0)); err == nil {
		t.Fatal("short prk accepted")
	}
	if _, err := TicketSecretsFromPRK(fill(32, 0), fill(31, 0)); err == nil {
		t.Fatal("short ticket hash accepted with a prk")
	}
}

// TestStoredSecrets checks that secrets rebuilt from their storage form
// (prk, ticket_hash) compute the same tags, and that the prk is
// HKDF-Extract(salt = ticket_hash, IKM = ss) as RFC 5869 §2.2 defines it.
func TestStoredSecrets(t *testing.T) {
	ss, th, pkh := fill(32, 1), fill(32, 2), fill(32, 9)
	sec, _ := DeriveTicketSecrets(ss, th)
	if want := hmacByHand(th, ss); !bytes.Equal(sec.PRK(), want) {
		t.Fatal("prk is not HKDF-Extract(ticket_hash, ss)")
	}
	back, err := TicketSecretsFromPRK(sec.PRK(), sec.TicketHash())
	if err != nil {
		t.Fatal(err)
	}
	if !back.CheckConfirm(sec.Confirm()) || !back.CheckNextKey(pkh, sec.NextKeyTag(pkh)) || !back.CheckRekey(pkh, sec.RekeyTag(pkh)) {
		t.Fatal("secrets rebuilt from their prk compute other tags")
	}
}

func TestZeroSecretsAcceptNothing(t *testing.T) {
	var z TicketSecrets
	if !z.IsZero() {
		t.Fatal("zero value not IsZero")
	}
	// The tags a zero prk and zero ticket hash would compute must still be
	// refused: an issuer record without secrets accepts no Status.
	zs, _ := TicketSecretsFromPRK(make([]byte, 32), make([]byte, 32))
	pkh := fill(32, 9)
	if z.CheckConfirm(zs.Confirm()) || z.CheckNextKey(pkh, zs.NextKeyTag(pkh)) || z.CheckRekey(pkh, zs.RekeyTag(pkh)) {
		t.Fatal("zero secrets accepted a tag")
	}
	if sec, _ := DeriveTicketSecrets(fill(32, 1), fill(32, 2)); sec.IsZero() {
		t.Fatal("derived secrets report IsZero")
	}
}

func BenchmarkEpochKey(b *testing.B) {
	ss, mix := fill(32, 1), fill(32, 2)
	for b.Loop() {
		if _, err := EpochKey(ss, mix, 7, "telemetry", "plant-7"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDeriveTicketSecrets(b *testing.B) {
	ss, th := fill(32, 1), fill(32, 2)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DeriveTicketSecrets(ss, th); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheckStatus is what the issuer computes when a device's Status
// arrives: the confirm and next-key tags, expanded from the stored prk.
func BenchmarkCheckStatus(b *testing.B) {
	sec, _ := DeriveTicketSecrets(fill(32, 1), fill(32, 2))
	stored, _ := TicketSecretsFromPRK(sec.PRK(), sec.TicketHash())
	pkh := fill(32, 9)
	confirm, tag := sec.Confirm(), sec.NextKeyTag(pkh)
	b.ReportAllocs()
	for b.Loop() {
		if !stored.CheckConfirm(confirm) || !stored.CheckNextKey(pkh, tag) {
			b.Fatal("tag refused")
		}
	}
}

// TestSecretsRedacted: printing or logging TicketSecrets, alone or inside
// a struct, never shows the prk.
func TestSecretsRedacted(t *testing.T) {
	sec, _ := DeriveTicketSecrets(fill(32, 1), fill(32, 2))
	prk := fmt.Sprintf("%x", sec.PRK())
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("x", "secrets", sec)
	holder := struct{ S TicketSecrets }{sec}
	for _, out := range []string{
		fmt.Sprint(sec), fmt.Sprintf("%v %+v %#v %s %x %q", sec, sec, sec, sec, sec, sec),
		fmt.Sprintf("%v %+v %#v", holder, holder, holder), logged.String(),
	} {
		if strings.Contains(out, prk) || strings.Contains(out, prk[:16]) || !strings.Contains(out, "redacted") {
			t.Fatalf("secret printed: %s", out)
		}
	}
}
