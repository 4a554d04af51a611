package cbor

import (
	"errors"
	"testing"
)

// TestUnmarshalFields: only the named fields are read, other keys are
// skipped; size, duplicate keys and indefinite lengths are still refused.
func TestUnmarshalFields(t *testing.T) {
	type full struct {
		A uint64 `cbor:"0,keyasint"`
		B []byte `cbor:"1,keyasint"`
		C string `cbor:"2,keyasint"`
	}
	type part struct {
		C string `cbor:"2,keyasint"`
	}
	b, err := Marshal(full{A: 7, B: []byte("xyz"), C: "id"})
	if err != nil {
		t.Fatal(err)
	}
	var p part
	if err := UnmarshalFields(b, 64, &p); err != nil || p.C != "id" {
		t.Fatalf("%+v %v", p, err)
	}
	if err := Unmarshal(b, 64, &p); err == nil {
		t.Fatal("strict Unmarshal accepted unknown keys")
	}
	if err := UnmarshalFields(b, len(b)-1, &p); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize: %v", err)
	}
	for name, in := range map[string][]byte{
		"duplicate key": {0xa2, 0x02, 0x61, 'a', 0x02, 0x61, 'b'},
		"indefinite":    {0xbf, 0x02, 0x61, 'a', 0xff},
		"empty":         {},
	} {
		if err := UnmarshalFields(in, 64, &p); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
