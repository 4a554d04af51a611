package cbor

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

type msg struct {
	Version uint64 `cbor:"0,keyasint"`
	Name    string `cbor:"1,keyasint"`
	Data    []byte `cbor:"2,keyasint,omitempty"`
}

func hx(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	in := msg{Version: 1, Name: "a", Data: []byte{1, 2}}
	b, err := Marshal(&in)
	if err != nil {
		t.Fatal(err)
	}
	// a3 00 01 01 61 61 02 42 0102: map(3), keys in order, shortest forms.
	if want := hx("a3 0001 01 6161 02 420102"); !bytes.Equal(b, want) {
		t.Fatalf("got %x, want %x", b, want)
	}
	var out msg
	if err := Unmarshal(b, 64, &out); err != nil || out.Name != "a" || !bytes.Equal(out.Data, in.Data) {
		t.Fatal(out, err)
	}
}

func TestStrict(t *testing.T) {
	cases := map[string]string{
		"duplicate key":         "a3 0001 0161 61 0002",
		"unknown key":           "a3 0001 0161 61 0900",
		"indefinite map":        "bf 0001 0161 61 ff",
		"indefinite text":       "a2 0001 01 7f6161ff",
		"tag":                   "c1 a2 0001 016161",
		"unsorted keys":         "a2 016161 0001",
		"non-minimal int":       "a2 001801 016161",
		"non-minimal length":    "a2 0001 01 780161",
		"trailing bytes":        "a2 0001 016161 00",
		"invalid utf-8":         "a2 0001 0161ff",
		"empty optional":        "a3 0001 016161 0240",
		"float":                 "a2 00f93c00 016161",
		"negative into uint":    "a2 0020 016161",
		"byte string for text":  "a2 0001 014161",
		"truncated":             "a2 0001 0161",
		"nesting beyond limits": "a2 0001 01 81818181818100",
	}
	for name, h := range cases {
		var m msg
		if err := Unmarshal(hx(h), 64, &m); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
	}
	var m msg
	if err := Unmarshal(nil, 64, &m); !errors.Is(err, ErrMalformed) {
		t.Errorf("empty: %v", err)
	}
	if err := Unmarshal(hx("a2 0001 016161"), 5, &m); !errors.Is(err, ErrTooLarge) {
		t.Errorf("over the bound: %v", err)
	}
}

// FuzzUnmarshal: never panics, and whatever is accepted re-encodes to the
// identical bytes.
func FuzzUnmarshal(f *testing.F) {
	f.Add(hx("a3 0001 016161 02420102"))
	f.Add(hx("a2 0001 016161"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var m msg
		if Unmarshal(in, 1024, &m) != nil {
			return
		}
		out, err := Marshal(&m)
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("accepted %x re-encodes to %x (%v)", in, out, err)
		}
	})
}
