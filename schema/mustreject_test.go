package schema_test

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"testing"

	"github.com/entropykem/entropykem/pkg/kem"
	"github.com/entropykem/entropykem/pkg/signature"
	"github.com/entropykem/entropykem/pkg/wire"
)

// MustReject lists inputs that a decoder MUST refuse, each with the rule
// of PROTOCOL.md §4 (or the CDDL range, or §5's field consistency) that
// refuses it. Every case is a small edit of a valid message in `valid`,
// so the named rule is the only thing wrong with it.
type MustReject struct {
	Comment string        `json:"comment"`
	Valid   []ValidInput  `json:"valid"`
	Cases   []RejectInput `json:"must_reject"`
}

type ValidInput struct {
	Message string `json:"message"` // CDDL rule name
	Input   Hex    `json:"input"`
}

type RejectInput struct {
	Name    string `json:"name"`
	Message string `json:"message"` // CDDL rule name
	Rule    string `json:"rule"`    // where the spec says it
	Reason  string `json:"reason"`  // why it must be refused
	Input   Hex    `json:"input"`
}

// A tiny CBOR writer that can also write what deterministic encoders
// refuse to (non-shortest heads, unsorted or duplicate keys).

func head(major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return []byte{m | byte(n)}
	case n <= 0xff:
		return []byte{m | 24, byte(n)}
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16([]byte{m | 25}, uint16(n))
	case n <= 0xffffffff:
		return binary.BigEndian.AppendUint32([]byte{m | 26}, uint32(n))
	}
	return binary.BigEndian.AppendUint64([]byte{m | 27}, n)
}

func cu(n uint64) []byte  { return head(0, n) }
func cn(n uint64) []byte  { return head(1, n-1) } // -n
func cb(b []byte) []byte  { return append(head(2, uint64(len(b))), b...) }
func ct(s string) []byte  { return append(head(3, uint64(len(s))), s...) }
func cbool(v bool) []byte { return []byte{map[bool]byte{false: 0xf4, true: 0xf5}[v]} }
func carr(items ...[]byte) []byte {
	out := head(4, uint64(len(items)))
	for _, it := range items {
		out = append(out, it...)
	}
	return out
}

// kv is one map entry, already encoded.
type kv struct{ k, v []byte }

type cmap []kv

func (m cmap) enc() []byte {
	out := head(5, uint64(len(m)))
	for _, e := range m {
		out = append(out, e.k...)
		out = append(out, e.v...)
	}
	return out
}

func (m cmap) set(key uint64, v []byte) cmap {
	c := append(cmap(nil), m...)
	for i := range c {
		if string(c[i].k) == string(cu(key)) {
			c[i].v = v
			return c
		}
	}
	panic("no such key")
}

func (m cmap) del(key uint64) cmap {
	var c cmap
	for _, e := range m {
		if string(e.k) != string(cu(key)) {
			c = append(c, e)
		}
	}
	return c
}

func (m cmap) add(k, v []byte) cmap { return append(append(cmap(nil), m...), kv{k, v}) }

func (m cmap) swap(i, j int) cmap {
	c := append(cmap(nil), m...)
	c[i], c[j] = c[j], c[i]
	return c
}

func (m cmap) indefinite() []byte {
	out := []byte{0xbf}
	for _, e := range m {
		out = append(out, e.k...)
		out = append(out, e.v...)
	}
	return append(out, 0xff)
}

func makeMustReject(t *testing.T, v *Vectors) MustReject {
	e1 := v.Epochs[0]
	out := MustReject{Comment: "inputs every decoder MUST refuse, each one edit away from a valid message of `valid`; see README.md"}
	add := func(name, msg, rule, reason string, in []byte) {
		out.Cases = append(out.Cases, RejectInput{Name: name, Message: msg, Rule: rule, Reason: reason, Input: in})
	}
	valid := func(msg string, in []byte) { out.Valid = append(out.Valid, ValidInput{Message: msg, Input: in}) }

	// EpochInfo: the smallest map, for the generic rules of §4.
	info := cmap{{cu(0), cu(1)}, {cu(1), cu(4)}, {cu(2), cu(epochAt)}, {cu(3), cu(3600)}, {cu(4), cu(epochAt + 3600)}}
	const ei = "epoch-announcement"
	valid(ei, info.enc())
	add("oversize", ei, "§4 size bound first; §11 EpochInfo 128 bytes", "longer than the message's bound, refused before decoding",
		info.add(cu(5), cb(make([]byte, 130))).enc())
	dup := info.add(cu(1), cu(4))
	dup[1], dup[2], dup[3], dup[4], dup[5] = info[1], kv{cu(1), cu(4)}, info[2], info[3], info[4]
	add("duplicate key", ei, "§4 duplicate keys", "key 1 twice", dup.enc())
	add("indefinite-length map", ei, "§4 indefinite lengths", "map of indefinite length", info.indefinite())
	add("tag on a value", ei, "§4 tags", "epoch wrapped in tag 1", info.set(1, append([]byte{0xc1}, cu(4)...)).enc())
	add("unknown key", ei, "§4 unknown keys", "key 5 is not in the CDDL", info.add(cu(5), cu(0)).enc())
	add("float", ei, "§4 floats", "period_s as a float 3600.0", info.set(3, []byte{0xfa, 0x45, 0x61, 0x00, 0x00}).enc())
	add("trailing bytes", ei, "§4 trailing bytes", "a valid message followed by 0x00", append(info.enc(), 0))
	add("non-shortest integer", ei, "§4 deterministic encoding", "epoch 4 as 0x18 0x04", info.set(1, []byte{0x18, 4}).enc())
	add("non-shortest length", ei, "§4 deterministic encoding", "map head with a 1-byte length", append([]byte{0xb8, 5}, info.enc()[1:]...))
	add("keys not sorted", ei, "§4 deterministic encoding (keys sorted bytewise)", "key 1 before key 0", info.swap(0, 1).enc())
	add("wrong version", ei, "§4 key 0 is the version, 1", "version 2", info.set(0, cu(2)).enc())
	add("missing field", ei, "CDDL: every non-optional field is present", "no next_at (key 4)", info.del(4).enc())
	add("wrong type", ei, "CDDL types", "epoch as a text string", info.set(1, ct("4")).enc())
	add("text map key", ei, "§4 small unsigned integer keys", `key "1" as text`, cmap{{cu(0), cu(1)}, {ct("1"), cu(4)}}.enc())
	add("negative integer", ei, "CDDL types", "epoch -1", info.set(1, cn(1)).enc())
	add("epoch zero", ei, "CDDL epoch = 1..2^53-1", "epoch 0", info.set(1, cu(0)).enc())
	add("epoch too large", ei, "CDDL epoch = 1..2^53-1", "epoch 2^53", info.set(1, cu(1<<53)).enc())
	add("time too large", ei, "CDDL unix-time = 0..253402300799", "issued_at 253402300800", info.set(2, cu(253402300800)).enc())
	add("period zero", ei, "CDDL period_s .ge 1", "period_s 0", info.set(3, cu(0)).enc())

	online := cmap{{cu(0), cu(1)}, {cu(1), cbool(true)}, {cu(2), cu(epochAt)}}
	valid("issuer-online", online.enc())
	add("online not a bool", "issuer-online", "CDDL types", "online as the integer 1", online.set(1, cu(1)).enc())

	// Registration.
	reg := cmap{{cu(0), cu(1)}, {cu(1), ct(v.Device.ID)}, {cu(2), cu(uint64(v.Device.KEMAlg))}, {cu(3), cb(v.Device.PublicKey)}, {cu(4), cu(v.Device.CreatedAt)}}
	const rg = "registration"
	valid(rg, reg.enc())
	add("invalid UTF-8", rg, "§4 invalid UTF-8", "device_id with byte 0xff", reg.set(1, append(head(3, 6), "dev-0\xff"...)).enc())
	add("device id bad first char", rg, "§3 device_id", "device_id starting with '.'", reg.set(1, ct(".dev-01")).enc())
	add("device id bad char", rg, "§3 device_id", "device_id with '/'", reg.set(1, ct("dev/01")).enc())
	add("device id too long", rg, "§3 device_id", "65 characters", reg.set(1, ct(string(make65()))).enc())
	add("unknown kem", rg, "§2 closed allow-list", "kem_alg 0x0043", reg.set(2, cu(0x43)).enc())
	add("public key wrong size", rg, "§2 sizes; CDDL kem-public-key", "ML-KEM-1024 key of 1567 bytes", reg.set(3, cb(v.Device.PublicKey[:1567])).enc())
	add("public key of another kem's size", rg, "§2 sizes per kem_alg", "an ML-KEM-768-sized key named ML-KEM-1024", reg.set(3, cb(make([]byte, 1184))).enc())
	bad := append([]byte(nil), v.Device.PublicKey...)
	bad[0], bad[1] = 0xff, 0xff // first coefficient 0xfff >= 3329
	add("public key fails the modulus check", rg, "§2 FIPS 203 §7.2 modulus check", "first 12-bit coefficient 4095", reg.set(3, cb(bad)).enc())
	add("empty optional", rg, "§4 optional fields are absent, never empty", "rekey as an empty map", reg.add(cu(5), cmap{}.enc()).enc())

	// Ticket body and Ticket.
	tb := cmap{{cu(0), cu(1)}, {cu(1), ct(v.Device.ID)}, {cu(2), cu(1)}, {cu(3), cu(e1.IssuedAt)}, {cu(4), cu(e1.TTL)},
		{cu(5), cu(uint64(v.Device.KEMAlg))}, {cu(6), cb(ticketCT(t, e1.TicketBody))}, {cu(7), cb(make([]byte, 32))},
		{cu(8), cb(v.Device.PKHash)}, {cu(9), ct(v.Purpose)}, {cu(10), ct(v.Group)}}
	const bd = "ticket-body"
	if string(tb.enc()) != string(e1.TicketBody) {
		t.Fatal("rebuilt ticket body differs from vectors.json's")
	}
	valid(bd, tb.enc())
	add("ttl zero", bd, "CDDL ttl_s 1..2678400", "ttl_s 0", tb.set(4, cu(0)).enc())
	add("ttl too long", bd, "CDDL ttl_s 1..2678400", "ttl_s 2678401", tb.set(4, cu(2678401)).enc())
	add("ciphertext wrong size", bd, "§2 sizes per kem_alg", "ML-KEM-1024 ciphertext of 1088 bytes", tb.set(6, cb(make([]byte, 1088))).enc())
	add("hash wrong size", bd, "CDDL hash = bstr .size 32", "prev of 31 bytes", tb.set(7, cb(make([]byte, 31))).enc())
	add("label with semicolon", bd, "§3 purpose: no ';'", `purpose "a;b"`, tb.set(9, ct("a;b")).enc())
	add("label with space", bd, "§3 purpose: 0x21-0x7E", `group "a b"`, tb.set(10, ct("a b")).enc())
	add("empty label", bd, "§3 purpose: 1-64 characters", "empty group", tb.set(10, ct("")).enc())

	tk := cmap{{cu(0), cu(1)}, {cu(1), cb(e1.TicketBody)}, {cu(2), cu(e1.LeafIndex)}, {cu(3), cu(e1.TreeSize)}, {cu(4), carr(cb(e1.Path[0]), cb(e1.Path[1]))}}
	const tkn = "ticket"
	if string(tk.enc()) != string(e1.Ticket) {
		t.Fatal("rebuilt ticket differs from vectors.json's")
	}
	valid(tkn, tk.enc())
	add("tree size zero", tkn, "CDDL tree_size .ge 1", "tree_size 0", tk.set(3, cu(0)).enc())
	add("leaf index out of tree", tkn, "CDDL leaf_index < tree_size", "leaf_index 3 of 3", tk.set(2, cu(3)).enc())
	path := make([][]byte, 65)
	for i := range path {
		path[i] = cb(make([]byte, 32))
	}
	add("path too long", tkn, "§11 inclusion path 64 hashes", "65 path hashes", tk.set(4, carr(path...)).enc())
	add("path hash wrong size", tkn, "CDDL [0*64 hash]", "a 31-byte path element", tk.set(4, carr(cb(e1.Path[0]), cb(e1.Path[1][:31]))).enc())
	add("body not a ticket-body", tkn, "CDDL bstr .cbor ticket-body", "body with ttl_s 0", tk.set(1, cb(tb.set(4, cu(0)).enc())).enc())
	add("body with trailing byte", tkn, "§4 trailing bytes, inside bstr .cbor", "body followed by 0x00", tk.set(1, cb(append(append([]byte(nil), e1.TicketBody...), 0))).enc())

	// Status (vectors.json's epoch-1 Status, rebuilt).
	s := cmapOf(t, e1.Status)
	const sn = "status"
	valid(sn, s.enc())
	add("ok without confirm", sn, "§5.6 ok and gap carry 8-11", "state ok, no confirm", s.del(8).enc())
	add("ok with prev_epoch", sn, "§5.6 prev_epoch exactly with gap", "state ok with prev_epoch", s.add(cu(12), cu(0)).enc())
	add("gap without prev_epoch", sn, "§5.6 prev_epoch exactly with gap", "state gap, no prev_epoch", s.set(3, cu(1)).enc())
	add("prev_epoch not below epoch", sn, "§5.6 prev_epoch below epoch", "gap with prev_epoch 1 at epoch 1", s.set(3, cu(1)).add(cu(12), cu(1)).enc())
	add("ok with a reason", sn, "§5.6 reason 0 with ok and gap", "state ok, reason 7", s.set(4, cu(7)).enc())
	rej := cmap{s[0], s[1], s[2], {cu(3), cu(2)}, {cu(4), cu(7)}, s[5], s[6], s[7]}
	valid(sn, rej.enc())
	add("rejected without a reason", sn, "§5.6 rejected and equivocation carry reason != 0", "state rejected, reason 0", rej.set(4, cu(0)).enc())
	add("rejected with confirm", sn, "§5.6 none of 8-12 with rejected", "state rejected with confirm", rej.add(cu(8), s[8].v).enc())
	add("stale with another reason", sn, "§5.6 stale carries reason 12", "state stale, reason 7", rej.set(3, cu(4)).enc())
	add("unknown state", sn, "CDDL status-state", "state 5", rej.set(3, cu(5)).enc())
	add("ticket_hash without an epoch", sn, "CDDL 7 present iff epoch > 0", "epoch 0 with ticket_hash", rej.set(2, cu(0)).enc())
	add("epoch without ticket_hash", sn, "CDDL 7 present iff epoch > 0", "epoch 1, no ticket_hash", rej.del(7).enc())
	add("next key of another size", sn, "§2 sizes per kem_alg", "next_alg ML-KEM-768 with a 1568-byte key", s.set(9, cu(0x41)).enc())
	add("status oversize", sn, "§11 Status 2048 bytes, checked before decoding", "2049 bytes", append(s.enc(), make([]byte, 2049-len(s.enc()))...))
	add("indefinite byte string", sn, "§4 indefinite lengths", "ticket_hash as chunks", s.set(7, append(append(append([]byte{0x5f}, cb(e1.TicketHash[:16])...), cb(e1.TicketHash[16:])...), 0xff)).enc())

	// EpochRoot payload and the COSE_Sign1 around it.
	rp := cmapOf(t, e1.RootPayload)
	valid("epoch-root", rp.enc())
	add("root tree size zero", "epoch-root", "CDDL tree_size .ge 1", "tree_size 0", rp.set(3, cu(0)).enc())
	// A streamed epoch's root (§5.5): the same payload cut into chunks of
	// 2 leaves: 2 chunks for tree_size 3. Its chunk roots need not hash to
	// the root for the decoder; that is the proof check of §8.2 rule 2.
	h1, h2 := sum(e1.RootPayload), sum(e1.TicketHash)
	chunked := rp.add(cu(5), cu(1)).add(cu(6), carr(cb(h1), cb(h2)))
	valid("epoch-root", chunked.enc())
	const er = "epoch-root"
	add("chunk height alone", er, "§5.4 chunk_height and chunk_roots together", "chunk_height 1 without chunk_roots", rp.add(cu(5), cu(1)).enc())
	add("chunk roots alone", er, "§5.4 chunk_height and chunk_roots together", "chunk_roots without chunk_height", rp.add(cu(6), carr(cb(h1), cb(h2))).enc())
	add("chunk height zero", er, "CDDL chunk_height 1..63", "chunk_height 0 with two chunk roots", chunked.set(5, cu(0)).enc())
	add("chunk height 64", er, "CDDL chunk_height 1..63", "chunk_height 64", chunked.set(5, cu(64)).enc())
	add("one chunk", er, "§5.4 at least two chunks", "chunk_height 2: tree_size 3 is one chunk, whose root is given", chunked.set(5, cu(2)).set(6, carr(cb(h1))).enc())
	add("chunk count mismatch", er, "§5.4 exactly ceil(tree_size / 2^chunk_height) chunk roots", "three chunk roots for two chunks", chunked.set(6, carr(cb(h1), cb(h2), cb(h1))).enc())
	add("chunk root wrong size", er, "CDDL hash .size 32", "a chunk root of 31 bytes", chunked.set(6, carr(cb(h1), cb(h2[:31]))).enc())
	add("empty chunk roots", er, "§4 optional fields are absent, never empty", "chunk_roots as an empty array", rp.add(cu(5), cu(1)).add(cu(6), carr()).enc())
	many := make([][]byte, 65)
	for i := range many {
		many[i] = cb(h1)
	}
	add("too many chunks", er, "§11 at most 64 chunk roots", "tree_size 130 in 65 chunks of 2", chunked.set(3, cu(130)).set(6, carr(many...)).enc())
	rm := e1.RootMessage
	valid("epoch-root-message", rm)
	prot, payload, sig := sign1Parts(t, rm)
	const cm = "epoch-root-message"
	sign1 := func(tag, p, unprot, pl, sg []byte) []byte {
		return append(append([]byte(nil), tag...), carr(p, unprot, pl, sg)...)
	}
	kid := v.Issuer.KID
	protOf := func(m cmap) []byte { return cb(m.enc()) }
	goodProt := cmap{{cu(1), cn(50)}, {cu(4), cb(kid)}}
	if string(protOf(goodProt)) != string(cb(prot)) {
		t.Fatal("rebuilt protected header differs")
	}
	add("untagged", cm, "§5.4 tagged COSE_Sign1", "no tag 18", sign1(nil, cb(prot), cmap{}.enc(), cb(payload), cb(sig)))
	add("other tag", cm, "§4 no tags except 18 around COSE_Sign1", "tag 17", sign1([]byte{0xd1}, cb(prot), cmap{}.enc(), cb(payload), cb(sig)))
	add("tag not shortest", cm, "§4 deterministic encoding", "tag 18 as 0xd8 0x12", sign1([]byte{0xd8, 18}, cb(prot), cmap{}.enc(), cb(payload), cb(sig)))
	add("unprotected not empty", cm, "§5.4 unprotected header is the empty map", "kid in the unprotected header", sign1([]byte{0xd2}, cb(prot), cmap{{cu(4), cb(kid)}}.enc(), cb(payload), cb(sig)))
	add("protected extra key", cm, "§5.4 protected header exactly {1: alg, 4: kid}", "content type 3 added", sign1([]byte{0xd2}, protOf(cmap{goodProt[0], {cu(3), cu(0)}, goodProt[1]}), cmap{}.enc(), cb(payload), cb(sig)))
	add("algorithm not allowed", cm, "§2 closed allow-list", "alg -48 (ML-DSA-44)", sign1([]byte{0xd2}, protOf(goodProt.set(1, cn(48))), cmap{}.enc(), cb(payload), cb(sig)))
	add("kid wrong size", cm, "CDDL kid bstr .size 8", "7-byte kid", sign1([]byte{0xd2}, protOf(goodProt.set(4, cb(kid[:7]))), cmap{}.enc(), cb(payload), cb(sig)))
	add("detached payload", cm, "§5.4 payload embedded", "payload nil", sign1([]byte{0xd2}, cb(prot), cmap{}.enc(), []byte{0xf6}, cb(sig)))
	add("signature wrong size", cm, "CDDL signature size per alg", "ML-DSA-87 signature of 4626 bytes", sign1([]byte{0xd2}, cb(prot), cmap{}.enc(), cb(payload), cb(sig[:len(sig)-1])))
	add("sign1 oversize", cm, "§11 COSE_Sign1 8192 bytes", "8193 bytes", append(append([]byte(nil), rm...), make([]byte, 8193-len(rm))...))

	kr := cmapOf(t, v.KeyRotation.Payload)
	valid("key-rotation", kr.enc())
	add("rotation key wrong size", "key-rotation", "CDDL new_key size per new_alg", "ML-DSA-87 key of 1952 bytes", kr.set(3, cb(v.KeyRotation.NewPublicKey[:1952])).enc())
	add("rotation alg not allowed", "key-rotation", "§2 closed allow-list", "new_alg -48", kr.set(2, cn(48)).enc())
	return out
}

func make65() []byte {
	b := make([]byte, 65)
	for i := range b {
		b[i] = 'a'
	}
	return b
}

// ticketCT returns the ciphertext field of a ticket body.
func ticketCT(t *testing.T, body []byte) []byte {
	b, err := wire.ParseTicketBody(body)
	must(t, err)
	return b.Ciphertext
}

// cmapOf splits a deterministic CBOR map of uint keys into its entries.
func cmapOf(t *testing.T, b []byte) cmap {
	t.Helper()
	n, off := readHead(t, b, 0, 5)
	var out cmap
	for range n {
		ks := off
		off = skipItem(t, b, off)
		vs := off
		off = skipItem(t, b, off)
		out = append(out, kv{b[ks:vs], b[vs:off]})
	}
	if off != len(b) {
		t.Fatal("trailing bytes")
	}
	return out
}

func sign1Parts(t *testing.T, msg []byte) (prot, payload, sig []byte) {
	t.Helper()
	if msg[0] != 0xd2 {
		t.Fatal("not tag 18")
	}
	n, off := readHead(t, msg, 1, 4)
	if n != 4 {
		t.Fatal("not 4 items")
	}
	var items [][]byte
	for range 4 {
		s := off
		off = skipItem(t, msg, off)
		items = append(items, msg[s:off])
	}
	strip := func(item []byte) []byte {
		l, o := readHead(t, item, 0, 2)
		return item[o : o+int(l)]
	}
	return strip(items[0]), strip(items[2]), strip(items[3])
}

// readHead reads the head at off, of major type want, and returns its
// argument and the offset after it.
func readHead(t *testing.T, b []byte, off int, want byte) (uint64, int) {
	t.Helper()
	if b[off]>>5 != want {
		t.Fatalf("major type %d at %d, want %d", b[off]>>5, off, want)
	}
	ai := b[off] & 31
	switch {
	case ai < 24:
		return uint64(ai), off + 1
	case ai == 24:
		return uint64(b[off+1]), off + 2
	case ai == 25:
		return uint64(binary.BigEndian.Uint16(b[off+1:])), off + 3
	case ai == 26:
		return uint64(binary.BigEndian.Uint32(b[off+1:])), off + 5
	case ai == 27:
		return binary.BigEndian.Uint64(b[off+1:]), off + 9
	}
	t.Fatalf("unsupported head at %d", off)
	return 0, 0
}

// skipItem returns the offset after the definite-length item at off.
func skipItem(t *testing.T, b []byte, off int) int {
	t.Helper()
	major := b[off] >> 5
	if b[off] >= 0xf4 && b[off] <= 0xf6 {
		return off + 1
	}
	n, o := readHead(t, b, off, major)
	switch major {
	case 0, 1:
		return o
	case 2, 3:
		return o + int(n)
	case 4:
		for range n {
			o = skipItem(t, b, o)
		}
		return o
	case 5:
		for range 2 * n {
			o = skipItem(t, b, o)
		}
		return o
	case 6:
		return skipItem(t, b, o)
	}
	t.Fatalf("unsupported item at %d", off)
	return 0
}

// parsers are the project's decoders, by CDDL rule name.
var parsers = map[string]func([]byte) error{
	"epoch-announcement": func(b []byte) error { _, err := wire.ParseEpochInfo(b); return err },
	"issuer-online":      func(b []byte) error { _, err := wire.ParseOnline(b); return err },
	// A Registration's key is validated (FIPS 203) before use (§2, §10).
	"registration": func(b []byte) error {
		r, err := wire.ParseRegistration(b)
		if err == nil {
			var sch kem.Scheme
			if sch, err = kem.Lookup(r.KEMAlg); err == nil {
				_, err = sch.ParsePublicKey(r.PublicKey)
			}
		}
		return err
	},
	"ticket-body":  func(b []byte) error { _, err := wire.ParseTicketBody(b); return err },
	"ticket":       func(b []byte) error { _, _, err := wire.ParseTicket(b); return err },
	"status":       func(b []byte) error { _, err := wire.ParseStatus(b); return err },
	"epoch-root":   func(b []byte) error { _, err := wire.ParseEpochRoot(b); return err },
	"key-rotation": func(b []byte) error { _, err := wire.ParseKeyRotation(b); return err },
	"epoch-root-message": func(b []byte) error {
		p, err := signature.ParseSign1(b)
		if err == nil {
			_, err = wire.ParseEpochRoot(p.Payload)
		}
		return err
	},
}

// TestMustReject: the project's decoders accept every valid input of
// must_reject.json and refuse every must_reject case.
func TestMustReject(t *testing.T) {
	raw, err := os.ReadFile(mustRejectFile)
	if err != nil {
		t.Fatal(err)
	}
	var m MustReject
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if len(m.Cases) < 40 {
		t.Fatalf("only %d cases", len(m.Cases))
	}
	for _, v := range m.Valid {
		p, ok := parsers[v.Message]
		if !ok {
			t.Fatalf("no parser for %s", v.Message)
		}
		if err := p(v.Input); err != nil {
			t.Errorf("valid %s refused: %v", v.Message, err)
		}
	}
	for _, c := range m.Cases {
		p, ok := parsers[c.Message]
		if !ok {
			t.Fatalf("no parser for %s", c.Message)
		}
		if c.Rule == "" || c.Reason == "" {
			t.Errorf("%s: no rule or reason", c.Name)
		}
		if err := p(c.Input); err == nil {
			t.Errorf("%s (%s): accepted; must be refused: %s", c.Name, c.Message, c.Reason)
		}
	}
}
