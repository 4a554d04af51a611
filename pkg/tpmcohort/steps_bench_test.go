package tpmcohort

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/entropykem/entropykem/internal/swtpmtest"
)

// BenchmarkSteps times the TPM commands a MAC is made of, and the
// alternative of keeping the SRK and key loaded between calls, to justify
// the per-call design (see the package doc).
func BenchmarkSteps(b *testing.B) {
	sw := swtpmtest.Start(b)
	tpm := sender{sw.Open()}
	secret := make([]byte, 32)
	rand.Read(secret)
	blob, err := Provision(tpm, secret, Options{})
	if err != nil {
		b.Fatal(err)
	}
	s, err := Open(tpm, blob)
	if err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 46)
	want := hmac.New(sha256.New, secret)
	want.Write(msg)
	wantMAC := want.Sum(nil)
	var err2 error

	b.Run("create-srk+flush", func(b *testing.B) {
		for b.Loop() {
			srk, err := createSRK(tpm)
			if err != nil {
				b.Fatal(err)
			}
			flush(tpm, "flush", srk.handle, &err2)
		}
	})
	srk, err := createSRK(tpm)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("load+flush", func(b *testing.B) {
		for b.Loop() {
			key, err := s.load(srk)
			if err != nil {
				b.Fatal(err)
			}
			flush(tpm, "flush", key.handle, &err2)
		}
	})
	b.Run("salted-session+flush", func(b *testing.B) {
		for b.Loop() {
			_, closeSess, err := s.session(srk)
			if err != nil {
				b.Fatal(err)
			}
			closeSession("flush", closeSess, &err2)
		}
	})
	key, err := s.load(srk)
	if err != nil {
		b.Fatal(err)
	}
	hmacCmd := func(sess tpm2.Session) {
		rsp, err := tpm2.Hmac{
			Handle:  tpm2.AuthHandle{Handle: key.handle, Name: key.name, Auth: sess},
			Buffer:  tpm2.TPM2BMaxBuffer{Buffer: msg},
			HashAlg: tpm2.TPMAlgSHA256,
		}.Execute(tpm)
		if err != nil {
			b.Fatal(err)
		}
		if !bytes.Equal(rsp.OutHMAC.Buffer, wantMAC) {
			b.Fatal("wrong MAC")
		}
	}
	b.Run("kept-loaded/fresh-salted-session", func(b *testing.B) {
		for b.Loop() {
			sess, closeSess, err := s.session(srk)
			if err != nil {
				b.Fatal(err)
			}
			hmacCmd(sess)
			closeSession("flush", closeSess, &err2)
		}
	})
	b.Run("kept-loaded/reused-salted-session", func(b *testing.B) {
		sess, closeSess, err := s.session(srk)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			hmacCmd(sess)
		}
		closeSession("flush", closeSess, &err2)
	})
	b.Run("kept-loaded/password", func(b *testing.B) {
		for b.Loop() {
			hmacCmd(tpm2.PasswordAuth(nil))
		}
	})
	flush(tpm, "flush", key.handle, &err2)
	flush(tpm, "flush", srk.handle, &err2)
	if err2 != nil {
		b.Fatal(err2)
	}
}
