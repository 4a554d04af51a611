package tpmcohort_test

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/entropykem/entropykem/internal/swtpmtest"
	"github.com/entropykem/entropykem/pkg/tpmcohort"
)

var update = flag.Bool("update", false, "regenerate testdata/blob-*.cbor with swtpm")

// goldenBlobs are blob encodings made by swtpm (go test -run TestGoldenBlobs
// -update), the fuzz seeds and a check that format version 1 keeps decoding.
var goldenBlobs = map[string]tpmcohort.Options{
	"blob-nopolicy.cbor":  {},
	"blob-pcr16.cbor":     {PCRs: []uint{16}},
	"blob-pcr0-7-16.cbor": {PCRs: []uint{0, 1, 2, 3, 4, 5, 6, 7, 16}},
}

func TestGoldenBlobs(t *testing.T) {
	if *update {
		sw := swtpmtest.Start(t)
		tpm := sw.Open()
		for name, opts := range goldenBlobs {
			enc, err := provision(t, tpm, newSecret(t), opts).MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join("testdata", name), enc, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, opts := range goldenBlobs {
		enc, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := tpmcohort.UnmarshalBlob(enc)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(b.PCRs) != len(opts.PCRs) {
			t.Errorf("%s: pcrs %v, want %v", name, b.PCRs, opts.PCRs)
		}
		again, err := b.MarshalBinary()
		if err != nil || !bytes.Equal(again, enc) {
			t.Errorf("%s: does not re-encode identically: %v", name, err)
		}
	}
}

// FuzzUnmarshalBlob: UnmarshalBlob never panics, fails only with ErrBadBlob,
// and whatever it accepts re-encodes to the same bytes.
func FuzzUnmarshalBlob(f *testing.F) {
	for name := range goldenBlobs {
		enc, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
	}
	f.Add([]byte{0xa0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := tpmcohort.UnmarshalBlob(data)
		if err != nil {
			if !errors.Is(err, tpmcohort.ErrBadBlob) {
				t.Fatalf("error %v does not wrap ErrBadBlob", err)
			}
			return
		}
		again, err := b.MarshalBinary()
		if err != nil {
			t.Fatalf("accepted blob does not marshal: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("accepted blob re-encodes differently:\n%x\n%x", data, again)
		}
	})
}
