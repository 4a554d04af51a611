package schema_test

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/mlkem"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
	fx "github.com/fxamacker/cbor/v2"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/crypto/chacha20poly1305"
)

// TestVectorsIndependently checks vectors.json the way another
// implementation would: with the standard library's ML-KEM, circl's ML-DSA
// directly, transparency-dev's proof verifier, a generic CBOR decoder and
// the derivations written out from PROTOCOL.md — none of the project's
// packages.
func TestVectorsIndependently(t *testing.T) {
	raw, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var v Vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	dk, err := mlkem.NewDecapsulationKey1024(v.Device.Seed)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "device public key", dk.EncapsulationKey().Bytes(), v.Device.PublicKey)
	eq(t, "pk_hash", sum(v.Device.PublicKey), v.Device.PKHash)
	reg := cborMap(t, v.Device.Registration)
	eq(t, "registration public key", reg[3].([]byte), v.Device.PublicKey)
	if reg[1] != "dev-01" || reg[2] != uint64(0x42) || reg[0] != uint64(1) || len(reg) != 5 {
		t.Fatalf("registration fields %v", reg)
	}
	// A re-enrollment (§7.6): the same fields and 6 = true, appended last
	// in deterministic order.
	re := cborMap(t, v.Device.Reenrollment)
	if re[6] != true || len(re) != 6 || !bytes.Equal(v.Device.Reenrollment[1:len(v.Device.Registration)], v.Device.Registration[1:]) {
		t.Fatalf("re-enrollment fields %v", re)
	}
	var pk mldsa87.PublicKey
	if err := pk.UnmarshalBinary(v.Issuer.PublicKey); err != nil {
		t.Fatal(err)
	}
	eq(t, "kid", sum(v.Issuer.PublicKey)[:8], v.Issuer.KID)

	var ratchetRoot []byte
	for i, e := range v.Epochs {
		ratchetRoot = checkEpoch(t, v, e, &pk, dk, ratchetRoot, i == 0)
		if i == 0 {
			next, err := mlkem.NewDecapsulationKey1024(e.NextSeed)
			if err != nil {
				t.Fatal(err)
			}
			dk = next // epoch 2 is encapsulated to the announced key
		}
	}
	checkEnvelope(t, v)
	checkKeyRotation(t, v, &pk)
}

// checkKeyRotation: the announcement is a COSE_Sign1 by the current issuer
// key over {0: 1, 1: from_epoch, 2: new_alg, 3: new_key, 4: issued_at},
// published under the new key's kid.
func checkKeyRotation(t *testing.T, v Vectors, pk *mldsa87.PublicKey) {
	r := v.KeyRotation
	payload := verifySign1(t, "key rotation", r.Message, pk)
	eq(t, "key rotation payload", payload, r.Payload)
	p := cborMap(t, payload)
	eq(t, "new key", p[3].([]byte), r.NewPublicKey)
	if p[0] != uint64(1) || p[1] != r.FromEpoch || p[2] != int64(-50) || p[4] != r.IssuedAt || r.NewAlg != -50 {
		t.Fatalf("key rotation fields %v", p)
	}
	next, _ := mldsa87.NewKeyFromSeed((*[32]byte)(r.NewSeed))
	nb, _ := next.MarshalBinary()
	eq(t, "new key from seed", nb, r.NewPublicKey)
	eq(t, "new kid", sum(r.NewPublicKey)[:8], r.NewKID)
	if want := "ekem/v1/issuer/key/" + hex.EncodeToString(r.NewKID); r.Topic != want {
		t.Fatalf("key rotation topic %q, want %q", r.Topic, want)
	}
}

func checkEpoch(t *testing.T, v Vectors, e Epoch, pk *mldsa87.PublicKey, dk *mlkem.DecapsulationKey1024, prevRoot []byte, first bool) []byte {
	eq(t, "ticket_hash", sum(e.TicketBody), e.TicketHash)
	eq(t, "leaf hash", sum(append([]byte{0}, e.TicketBody...)), e.LeafHash)
	path := make([][]byte, len(e.Path))
	for i := range e.Path {
		path[i] = e.Path[i]
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, e.LeafIndex, e.TreeSize, e.LeafHash, path, e.MerkleRoot); err != nil {
		t.Fatalf("epoch %d: inclusion proof: %v", e.Epoch, err)
	}
	checkRoot(t, e, pk)
	body := cborMap(t, e.TicketBody)
	ss, err := dk.Decapsulate(body[6].([]byte))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "ss", ss, e.SS)
	eq(t, "pk_hash in body", body[8].([]byte), sum(dk.EncapsulationKey().Bytes()))
	mix := mac(v.CohortSecret, append([]byte("ekem/v1 cohort"), e.TicketHash...))
	eq(t, "cohort_mix", mix, e.CohortMix)
	info := v.Purpose + ";" + v.Group + ";" + strconv.FormatUint(e.Epoch, 10)
	keyEpoch := kdf(append(bytes.Clone(ss), mix...), u64(e.Epoch), info)
	eq(t, "key_epoch", keyEpoch, e.KeyEpoch)
	eq(t, "confirm", mac(kdf(ss, e.TicketHash, "ekem/v1 confirm"), e.TicketHash), e.Confirm)
	eq(t, "next_tag", mac(kdf(ss, e.TicketHash, "ekem/v1 next-key"), e.NextPKHash), e.NextTag)
	next, err := mlkem.NewDecapsulationKey1024(e.NextSeed)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "next pk hash", sum(next.EncapsulationKey().Bytes()), e.NextPKHash)

	root := keyEpoch
	if !first {
		root = kdf(append(bytes.Clone(prevRoot), keyEpoch...), u64(e.Epoch), "mix:"+strconv.FormatUint(e.Epoch, 10))
	}
	chain := kdf(root, nil, "chain:"+strconv.FormatUint(e.Epoch, 10))
	for n, k := range e.Keys {
		mk := mac(chain, []byte("msg:"+v.Purpose+";ctr="+strconv.Itoa(n)))
		eq(t, "ratchet key "+strconv.Itoa(n), mk, k.Key)
		chain = mac(chain, []byte("ratchet"))
	}
	st := cborMap(t, e.Ratchet)
	eq(t, "ratchet root", st[4].([]byte), root)
	eq(t, "ratchet chain", st[5].([]byte), chain)
	return root
}

func checkRoot(t *testing.T, e Epoch, pk *mldsa87.PublicKey) {
	eq(t, "root payload", verifySign1(t, fmt.Sprintf("epoch %d root", e.Epoch), e.RootMessage, pk), e.RootPayload)
	p := cborMap(t, e.RootPayload)
	eq(t, "merkle root", p[4].([]byte), e.MerkleRoot)
	if p[1] != e.Epoch || p[3] != e.TreeSize {
		t.Fatalf("root payload fields %v", p)
	}
}

// verifySign1 checks a COSE_Sign1 (RFC 9052 §4.4) under pk and returns its
// payload.
func verifySign1(t *testing.T, what string, message []byte, pk *mldsa87.PublicKey) []byte {
	var msg struct {
		_           struct{} `cbor:",toarray"`
		Protected   []byte
		Unprotected map[any]any
		Payload     []byte
		Signature   []byte
	}
	tag := fx.RawTag{}
	if err := fx.Unmarshal(message, &tag); err != nil || tag.Number != 18 {
		t.Fatalf("%s: not a COSE_Sign1 (tag 18): %v", what, err)
	}
	if err := fx.Unmarshal(tag.Content, &msg); err != nil {
		t.Fatal(err)
	}
	sig, err := fx.Marshal([]any{"Signature1", msg.Protected, []byte{}, msg.Payload})
	if err != nil {
		t.Fatal(err)
	}
	if !mldsa87.Verify(pk, sig, nil, msg.Signature) {
		t.Fatalf("%s: signature does not verify", what)
	}
	return msg.Payload
}

func checkEnvelope(t *testing.T, v Vectors) {
	env := cborMap(t, v.Envelope.Envelope)
	em, err := fx.CoreDetEncOptions().EncMode()
	if err != nil {
		t.Fatal(err)
	}
	header, _ := em.Marshal(map[uint64]any{0: uint64(1), 1: env[1], 2: env[2], 3: env[3]})
	aead, err := chacha20poly1305.New(v.Envelope.Key)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := aead.Open(nil, make([]byte, 12), env[4].([]byte), header)
	if err != nil {
		t.Fatalf("envelope does not open: %v", err)
	}
	eq(t, "envelope plaintext", pt, v.Envelope.Plaintext)
	last := v.Epochs[len(v.Epochs)-1]
	if env[2] != last.Epoch || env[3] != uint64(len(last.Keys)) {
		t.Fatalf("envelope names (%v, %v)", env[2], env[3])
	}
}

func cborMap(t *testing.T, b []byte) map[uint64]any {
	t.Helper()
	var m map[uint64]any
	if err := fx.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func eq(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %x, want %x", what, got, want)
	}
}

func sum(b []byte) []byte { h := sha256.Sum256(b); return h[:] }

func mac(k, m []byte) []byte { h := hmac.New(sha256.New, k); h.Write(m); return h.Sum(nil) }

func kdf(ikm, salt []byte, info string) []byte {
	k, err := hkdf.Key(sha256.New, ikm, salt, info, 32)
	if err != nil {
		panic(err)
	}
	return k
}

func u64(x uint64) []byte { return binary.BigEndian.AppendUint64(nil, x) }
