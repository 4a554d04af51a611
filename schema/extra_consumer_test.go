package schema_test

import (
	"bytes"
	"crypto/mlkem"
	"encoding/json"
	"encoding/pem"
	"os"
	"testing"

	"github.com/cloudflare/circl/kem/xwing"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/crypto/chacha20poly1305"
)

// TestExtraVectorsIndependently checks the extra files the way another
// implementation would, without the project's packages.
func TestExtraVectorsIndependently(t *testing.T) {
	var v Vectors
	load(t, vectorsFile, &v)
	var pk mldsa87.PublicKey
	if err := pk.UnmarshalBinary(v.Issuer.PublicKey); err != nil {
		t.Fatal(err)
	}
	t.Run("tree", func(t *testing.T) { checkTree(t, v) })
	t.Run("kems", func(t *testing.T) { checkKEMs(t, v, &pk) })
	t.Run("messages", func(t *testing.T) { checkMessages(t, v, &pk) })
	t.Run("files", func(t *testing.T) { checkFiles(t, v) })
	t.Run("chunked", func(t *testing.T) { checkChunked(t, &pk) })
}

// checkChunked rebuilds a streamed epoch (PROTOCOL.md §5.5): each leaf's
// path proves inclusion in its chunk of 2^h leaves against that chunk's
// root, the chunk roots combined as RFC 9162 nodes give the Merkle root,
// which is also the MTH over every leaf, and the signed payload lists them.
func checkChunked(t *testing.T, pk *mldsa87.PublicKey) {
	var c ChunkedEpoch
	load(t, chunkedFile, &c)
	size := uint64(1) << c.ChunkHeight
	nChunks := (c.TreeSize + size - 1) / size
	if uint64(len(c.ChunkRoots)) != nChunks || uint64(len(c.Leaves)) != c.TreeSize || nChunks < 2 {
		t.Fatalf("%d chunk roots, %d leaves", len(c.ChunkRoots), len(c.Leaves))
	}
	var all [][]byte
	chunkLeaves := make([][][]byte, nChunks)
	for n, l := range c.Leaves {
		eq(t, "leaf hash", sum(append([]byte{0}, l.TicketBody...)), l.LeafHash)
		if l.LeafIndex != uint64(n) {
			t.Fatalf("leaf %d has index %d", n, l.LeafIndex)
		}
		tk := cborMap(t, l.Ticket)
		eq(t, "ticket body", tk[1].([]byte), l.TicketBody)
		if tk[2] != l.LeafIndex || tk[3] != c.TreeSize {
			t.Fatalf("leaf %d: ticket index %v size %v", n, tk[2], tk[3])
		}
		var path [][]byte
		for _, p := range tk[4].([]any) {
			path = append(path, p.([]byte))
		}
		chunk := l.LeafIndex / size
		start := chunk * size
		inChunk := min(size, c.TreeSize-start)
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, l.LeafIndex-start, inChunk, l.LeafHash, path, c.ChunkRoots[chunk]); err != nil {
			t.Fatalf("leaf %d in chunk %d: %v", n, chunk, err)
		}
		chunkLeaves[chunk] = append(chunkLeaves[chunk], l.LeafHash)
		all = append(all, l.LeafHash)
	}
	var roots [][]byte
	for i, hs := range chunkLeaves {
		eq(t, "chunk root", mth(hs), c.ChunkRoots[i])
		roots = append(roots, c.ChunkRoots[i])
	}
	eq(t, "MTH over the chunk roots", mth(roots), c.MerkleRoot)
	eq(t, "MTH over every leaf", mth(all), c.MerkleRoot)
	eq(t, "root payload", verifySign1(t, "streamed epoch root", c.RootMessage, pk), c.RootPayload)
	p := cborMap(t, c.RootPayload)
	eq(t, "payload root", p[4].([]byte), c.MerkleRoot)
	if p[1] != c.Epoch || p[3] != c.TreeSize || p[5] != c.ChunkHeight {
		t.Fatalf("root payload fields %v", p)
	}
	listed := p[6].([]any)
	if len(listed) != len(c.ChunkRoots) {
		t.Fatalf("payload lists %d chunk roots", len(listed))
	}
	for i, r := range listed {
		eq(t, "payload chunk root", r.([]byte), c.ChunkRoots[i])
	}
}

func load(t *testing.T, file string, v any) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatal(err)
	}
}

// mth is RFC 9162 §2.1.1's Merkle Tree Hash over leaf hashes.
func mth(leaves [][]byte) []byte {
	if len(leaves) == 1 {
		return leaves[0]
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	return sum(append(append([]byte{1}, mth(leaves[:k])...), mth(leaves[k:])...))
}

func checkTree(t *testing.T, v Vectors) {
	var tr Tree
	load(t, treeFile, &tr)
	if len(tr.Epochs) != len(v.Epochs) {
		t.Fatalf("%d epochs", len(tr.Epochs))
	}
	for i, te := range tr.Epochs {
		var hashes [][]byte
		prevID := ""
		for n, l := range te.Leaves {
			eq(t, "leaf hash", sum(append([]byte{0}, l.TicketBody...)), l.LeafHash)
			if l.LeafIndex != uint64(n) || l.DeviceID <= prevID {
				t.Fatalf("leaf %d: index %d id %q (leaves are ordered by device id)", n, l.LeafIndex, l.DeviceID)
			}
			prevID = l.DeviceID
			body := cborMap(t, l.TicketBody)
			if body[1] != l.DeviceID || body[2] != te.Epoch {
				t.Fatalf("leaf %d body fields %v %v", n, body[1], body[2])
			}
			tk := cborMap(t, l.Ticket)
			eq(t, "ticket body", tk[1].([]byte), l.TicketBody)
			var path [][]byte
			for _, p := range tk[4].([]any) {
				path = append(path, p.([]byte))
			}
			if err := proof.VerifyInclusion(rfc6962.DefaultHasher, l.LeafIndex, te.TreeSize, l.LeafHash, path, te.MerkleRoot); err != nil {
				t.Fatalf("epoch %d leaf %d: %v", te.Epoch, n, err)
			}
			hashes = append(hashes, l.LeafHash)
		}
		eq(t, "rebuilt tree head", mth(hashes), te.MerkleRoot)
		eq(t, "vectors.json root", te.MerkleRoot, v.Epochs[i].MerkleRoot)
		eq(t, "dev-01's leaf", te.Leaves[v.Epochs[i].LeafIndex].LeafHash, v.Epochs[i].LeafHash)
	}
}

func checkKEMs(t *testing.T, v Vectors, pk *mldsa87.PublicKey) {
	var ks KEMs
	load(t, kemsFile, &ks)
	if len(ks.KEMs) != 2 {
		t.Fatalf("%d KEMs", len(ks.KEMs))
	}
	for _, k := range ks.KEMs {
		var pub, ss []byte
		var nextPub []byte
		switch k.KEMAlg {
		case 0x0041:
			dk, err := mlkem.NewDecapsulationKey768(k.Seed)
			if err != nil {
				t.Fatal(err)
			}
			pub = dk.EncapsulationKey().Bytes()
			if ss, err = dk.Decapsulate(k.Ciphertext); err != nil {
				t.Fatal(err)
			}
			next, err := mlkem.NewDecapsulationKey768(k.NextSeed)
			if err != nil {
				t.Fatal(err)
			}
			nextPub = next.EncapsulationKey().Bytes()
			if len(k.Ciphertext) != 1088 || len(pub) != 1184 {
				t.Fatal("ML-KEM-768 sizes")
			}
		case 0x647a:
			sk, p := xwing.DeriveKeyPairPacked(k.Seed)
			pub, ss = p, xwing.Decapsulate(k.Ciphertext, sk)
			_, nextPub = xwing.DeriveKeyPairPacked(k.NextSeed)
			if len(k.Ciphertext) != 1120 || len(pub) != 1216 || len(k.Seed) != 32 {
				t.Fatal("X-Wing sizes")
			}
		default:
			t.Fatalf("kem %x", k.KEMAlg)
		}
		eq(t, k.Name+" public key", pub, k.PublicKey)
		eq(t, k.Name+" pk_hash", sum(pub), k.PKHash)
		eq(t, k.Name+" ss", ss, k.SS)
		body := cborMap(t, k.TicketBody)
		eq(t, k.Name+" ct", body[6].([]byte), k.Ciphertext)
		eq(t, k.Name+" body pk_hash", body[8].([]byte), k.PKHash)
		if body[5] != uint64(k.KEMAlg) {
			t.Fatalf("%s: kem_alg %v", k.Name, body[5])
		}
		eq(t, k.Name+" ticket_hash", sum(k.TicketBody), k.TicketHash)
		// A tree of one: the root is the leaf hash, the path empty.
		root := cborMap(t, verifySign1(t, k.Name, k.RootMessage, pk))
		eq(t, k.Name+" tree of one", root[4].([]byte), sum(append([]byte{0}, k.TicketBody...)))
		mix := mac(v.CohortSecret, append([]byte("ekem/v1 cohort"), k.TicketHash...))
		eq(t, k.Name+" cohort_mix", mix, k.CohortMix)
		eq(t, k.Name+" key_epoch", kdf(append(bytes.Clone(ss), mix...), u64(1), v.Purpose+";"+v.Group+";1"), k.KeyEpoch)
		eq(t, k.Name+" confirm", mac(kdf(ss, k.TicketHash, "ekem/v1 confirm"), k.TicketHash), k.Confirm)
		eq(t, k.Name+" next pk hash", sum(nextPub), k.NextPKHash)
		eq(t, k.Name+" next_tag", mac(kdf(ss, k.TicketHash, "ekem/v1 next-key"), k.NextPKHash), k.NextTag)
		st := cborMap(t, k.Status)
		if st[9] != uint64(k.KEMAlg) { // next_alg = the ticket's kem_alg (§7.4)
			t.Fatalf("%s: next_alg %v", k.Name, st[9])
		}
		eq(t, k.Name+" status next_pk", st[10].([]byte), nextPub)
	}
}

func checkMessages(t *testing.T, v Vectors, pk *mldsa87.PublicKey) {
	var m Messages
	load(t, messagesFile, &m)
	// Epoch 4 is to the key announced after epoch 2, with prev = epoch 3.
	dk, err := mlkem.NewDecapsulationKey1024(v.Epochs[1].NextSeed)
	if err != nil {
		t.Fatal(err)
	}
	for _, tv := range []TicketVec{m.Epoch3, m.Epoch4, m.Equivocating} {
		eq(t, "ticket_hash", sum(tv.TicketBody), tv.TicketHash)
		root := cborMap(t, verifySign1(t, "root", tv.RootMessage, pk))
		if root[1] != tv.Epoch {
			t.Fatalf("root of epoch %v", root[1])
		}
	}
	b4 := cborMap(t, m.Epoch4.TicketBody)
	eq(t, "epoch 4 prev", b4[7].([]byte), m.Epoch3.TicketHash)
	ss, err := dk.Decapsulate(b4[6].([]byte))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "epoch 4 ss", ss, m.SS4)
	th := m.Epoch4.TicketHash
	mix := mac(v.CohortSecret, append([]byte("ekem/v1 cohort"), th...))
	eq(t, "epoch 4 key_epoch", kdf(append(bytes.Clone(ss), mix...), u64(4), v.Purpose+";"+v.Group+";4"), m.KeyEpoch4)
	eq(t, "epoch 4 confirm", mac(kdf(ss, th, "ekem/v1 confirm"), th), m.Confirm4)
	next, err := mlkem.NewDecapsulationKey1024(m.NextSeed4)
	if err != nil {
		t.Fatal(err)
	}
	nextPK := next.EncapsulationKey().Bytes()
	eq(t, "epoch 4 next_tag", mac(kdf(ss, th, "ekem/v1 next-key"), sum(nextPK)), m.NextTag4)
	if bytes.Equal(m.Equivocating.TicketHash, th) {
		t.Fatal("the equivocating ticket is the same ticket")
	}

	gap := cborMap(t, m.GapStatus)
	if gap[2] != uint64(4) || gap[3] != uint64(1) || gap[4] != uint64(0) || gap[6] != uint64(3) || gap[12] != uint64(2) {
		t.Fatalf("gap status %v", gap)
	}
	eq(t, "gap ticket_hash", gap[7].([]byte), th)
	eq(t, "gap confirm", gap[8].([]byte), m.Confirm4)
	eq(t, "gap next_pk", gap[10].([]byte), nextPK)
	for _, c := range []struct {
		name          string
		b             []byte
		state, reason uint64
		seq           uint64
	}{
		{"rejected", m.RejectedStatus, 2, 7, 4},
		{"equivocation", m.EquivocationStatus, 3, 8, 5},
		{"stale", m.StaleStatus, 4, 12, 6},
	} {
		s := cborMap(t, c.b)
		if s[2] != uint64(4) || s[3] != c.state || s[4] != c.reason || s[6] != c.seq || len(s) != 8 {
			t.Fatalf("%s status %v", c.name, s)
		}
		eq(t, c.name+" ticket_hash (the last accepted)", s[7].([]byte), th)
	}
	if s := cborMap(t, m.StaleStatus); s[5] != m.StaleAt {
		t.Fatalf("stale time %v", s[5])
	}

	nk, err := mlkem.NewDecapsulationKey768(m.RekeyNewSeed)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "rekey key", nk.EncapsulationKey().Bytes(), m.RekeyNewPublicKey)
	eq(t, "rekey tag", mac(kdf(ss, th, "ekem/v1 rekey"), sum(m.RekeyNewPublicKey)), m.RekeyTag)
	reg := cborMap(t, m.RekeyRegistration)
	rk, _ := reg[5].(map[any]any)
	if reg[2] != uint64(0x41) || rk == nil || rk[uint64(0)] != uint64(4) {
		t.Fatalf("rekey registration %v", reg)
	}
	eq(t, "rekey proof hash", rk[uint64(1)].([]byte), th)
	eq(t, "rekey proof tag", rk[uint64(2)].([]byte), m.RekeyTag)

	info := cborMap(t, m.EpochInfo)
	if info[1] != uint64(4) || info[3] != m.EpochInfoPeriodS || info[4] != info[2].(uint64)+m.EpochInfoPeriodS {
		t.Fatalf("epoch info %v", info)
	}
	for on, b := range map[bool][]byte{true: m.OnlineTrue, false: m.OnlineFalse} {
		o := cborMap(t, b)
		if o[1] != on || o[2] != m.OnlineSince {
			t.Fatalf("online %v", o)
		}
	}
}

func checkFiles(t *testing.T, v Vectors) {
	var f Files
	load(t, filesFile, &f)
	for typ, text := range map[string]string{"ENTROPYKEM ISSUER SECRET KEY": f.IssuerSecretPEM, "ENTROPYKEM ISSUER PUBLIC KEY": f.IssuerPublicPEM} {
		blk, rest := pem.Decode([]byte(text))
		if blk == nil || blk.Type != typ || len(blk.Headers) != 0 || len(bytes.TrimSpace(rest)) != 0 {
			t.Fatalf("%s: not one PEM block", typ)
		}
		m := cborMap(t, blk.Bytes)
		if m[0] != uint64(1) || m[1] != int64(-50) {
			t.Fatalf("%s: %v", typ, m)
		}
		want := v.Issuer.PublicKey
		if typ == "ENTROPYKEM ISSUER SECRET KEY" {
			want = v.Issuer.Seed
		}
		eq(t, typ, m[2].([]byte), want)
	}
	eq(t, "state_key", mac(v.CohortSecret, append([]byte("ekem/v1 state-key"), f.DeviceID...)), f.StateKey)
	if string(f.StateBin[:5]) != "EKDS\x01" {
		t.Fatal("state.bin header")
	}
	aead, err := chacha20poly1305.NewX(f.StateKey)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := aead.Open(nil, f.StateBin[5:29], f.StateBin[29:], append([]byte("ekem/v1 device-state"), f.DeviceID...))
	if err != nil {
		t.Fatalf("state.bin does not open: %v", err)
	}
	eq(t, "state plaintext", pt, f.StatePlaintext)
	rec := cborMap(t, pt)
	eq(t, "device-state", rec[1].([]byte), f.DeviceState)
	if rec[2] != f.StateSeq {
		t.Fatalf("seq %v", rec[2])
	}
	ds := cborMap(t, f.DeviceState)
	if ds[2] != uint64(4) || len(f.DeviceState) > 1024 || len(pt) > 3136 {
		t.Fatalf("device-state epoch %v, %d bytes; plaintext %d bytes", ds[2], len(f.DeviceState), len(pt))
	}
	cur := ds[6].(map[any]any)
	dk, err := mlkem.NewDecapsulationKey1024(cur[uint64(1)].([]byte))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "current key is the one epoch 4 used", sum(dk.EncapsulationKey().Bytes()), sum(mustKey(t, v.Epochs[1].NextSeed)))
	eq(t, "registration.cbor", f.RegistrationCBOR, v.Device.Registration)
	st := cborMap(t, f.StatusCBOR)
	if st[6].(uint64) <= f.StateSeq || st[3] != uint64(4) {
		t.Fatalf("status.cbor %v", st)
	}
	keys := cborMap(t, f.IssuerKeysCBOR)
	eq(t, "issuer-keys.cbor", keys[1].([]any)[0].([]byte), v.KeyRotation.Message)
}

func mustKey(t *testing.T, seed []byte) []byte {
	dk, err := mlkem.NewDecapsulationKey1024(seed)
	if err != nil {
		t.Fatal(err)
	}
	return dk.EncapsulationKey().Bytes()
}
