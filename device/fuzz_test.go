package device

import (
	"bytes"
	"testing"

	"github.com/entropykem/entropykem/pkg/cbor"
	"github.com/entropykem/entropykem/pkg/keyschedule"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/trust"
)

// fuzzSeeds returns valid state.bin plaintexts: a new device, one after
// its first ticket with an accepted Status, and one after a rejection.
func fuzzSeeds(f *testing.F) (key []byte, records [][]byte, files [][]byte) {
	e := newEnv(f, nil)
	add := func() {
		l := e.decrypted()
		sb, err := l.st.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		pt, err := cbor.Marshal(&record{Version: StateFileVersion, State: sb, Seq: l.seq, Status: l.status})
		if err != nil {
			f.Fatal(err)
		}
		records = append(records, pt)
		files = append(files, e.stateFile())
	}
	add()
	e.first()
	add()
	e.ticket([]byte("garbage"))
	if _, err := e.a.NextKey(); err != nil { // folds the rejection into state.bin
		f.Fatal(err)
	}
	add()
	key, err := keyschedule.StateKey(e.cohort, devID)
	if err != nil {
		f.Fatal(err)
	}
	return key, records, files
}

// FuzzDecodeRecord checks the decoder of the decrypted state: it never
// panics, and whatever it accepts re-encodes to exactly the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	_, records, _ := fuzzSeeds(f)
	for _, r := range records {
		f.Add(r)
	}
	f.Fuzz(func(t *testing.T, pt []byte) {
		l, err := decodeRecord(devID, pt)
		if err != nil {
			return
		}
		sb, err := l.st.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		again, err := cbor.Marshal(&record{Version: StateFileVersion, State: sb, Seq: l.seq, Status: l.status})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, pt) {
			t.Fatalf("accepted a non-canonical record:\n%x\n%x", pt, again)
		}
	})
}

// FuzzOpenState checks the whole state.bin decoder (header, AEAD, record)
// on arbitrary files: no panic, and whatever it accepts is authenticated.
func FuzzOpenState(f *testing.F) {
	key, _, files := fuzzSeeds(f)
	for _, b := range files {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := openState(key, devID, data)
		if err != nil {
			return
		}
		if l.st.DeviceID != devID {
			t.Fatal("accepted another device's state")
		}
		// Whatever is accepted is authenticated: any changed byte of the
		// nonce or ciphertext is refused.
		for _, i := range []int{len(stateMagic) + 1, stateHeaderSize, len(data) - 1} {
			bad := bytes.Clone(data)
			bad[i] ^= 1
			if _, err := openState(key, devID, bad); err == nil {
				t.Fatalf("accepted a state file with byte %d changed", i)
			}
		}
	})
}

// FuzzIssuerKeys checks the decoder of issuer-keys.cbor: it never panics,
// and a file it accepts holds only announcements the pinned key signed,
// re-encoding to the same bytes.
func FuzzIssuerKeys(f *testing.F) {
	a, b := mustKeyF(f), mustKeyF(f)
	pins, _ := signature.NewKeySet(a.Public())
	ab, err := trust.Sign(a, b.Public(), 4, 1)
	if err != nil {
		f.Fatal(err)
	}
	good, _ := cbor.Marshal(&issuerKeysFile{Version: 1, Rotations: [][]byte{ab}})
	empty, _ := cbor.Marshal(&issuerKeysFile{Version: 1})
	f.Add(good)
	f.Add(empty)
	f.Fuzz(func(t *testing.T, in []byte) {
		tr, err := decodeIssuerKeys(pins, in)
		if err != nil {
			return
		}
		for _, r := range tr.Rotations() {
			if !r.New.Equal(b.Public()) {
				t.Fatal("learned a key the pinned key did not announce")
			}
		}
		again, err := cbor.Marshal(&issuerKeysFile{Version: 1, Rotations: tr.Signed()})
		if err != nil || !bytes.Equal(again, in) {
			t.Fatalf("accepted file re-encodes differently (%v)", err)
		}
	})
}

func mustKeyF(f *testing.F) *signature.PrivateKey {
	k, err := signature.GenerateKey(signature.MLDSA65)
	if err != nil {
		f.Fatal(err)
	}
	return k
}
