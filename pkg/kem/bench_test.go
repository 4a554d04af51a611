package kem

import (
	"crypto/mlkem"
	"testing"
)

func forEachScheme(b *testing.B, fn func(b *testing.B, s Scheme, sk PrivateKey)) {
	for _, s := range allSchemes(b) {
		b.Run(s.ID().String(), func(b *testing.B) {
			sk, err := s.GenerateKey()
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			fn(b, s, sk)
		})
	}
}

// BenchmarkEncapsulate: encapsulation to an already parsed key.
func BenchmarkEncapsulate(b *testing.B) {
	forEachScheme(b, func(b *testing.B, s Scheme, sk PrivateKey) {
		pk, err := s.ParsePublicKey(sk.PublicKey().Bytes())
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, _, err := pk.Encapsulate(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkParseAndEncapsulate: what the issuer pays per device and epoch,
// starting from the encoded key (parsing expands the matrix Â).
func BenchmarkParseAndEncapsulate(b *testing.B) {
	forEachScheme(b, func(b *testing.B, s Scheme, sk PrivateKey) {
		enc := sk.PublicKey().Bytes()
		for b.Loop() {
			pk, err := s.ParsePublicKey(enc)
			if err != nil {
				b.Fatal(err)
			}
			if _, _, err := pk.Encapsulate(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkDecapsulate(b *testing.B) {
	forEachScheme(b, func(b *testing.B, s Scheme, sk PrivateKey) {
		ct, _, err := sk.PublicKey().Encapsulate()
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := sk.Decapsulate(ct); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkGenerateKey(b *testing.B) {
	forEachScheme(b, func(b *testing.B, s Scheme, _ PrivateKey) {
		for b.Loop() {
			if _, err := s.GenerateKey(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkStdMLKEM1024 is crypto/mlkem's ML-KEM-1024 for comparison.
func BenchmarkStdMLKEM1024(b *testing.B) {
	dk, err := mlkem.GenerateKey1024()
	if err != nil {
		b.Fatal(err)
	}
	enc := dk.EncapsulationKey().Bytes()
	b.Run("Encapsulate", func(b *testing.B) {
		b.ReportAllocs()
		ek := dk.EncapsulationKey()
		for b.Loop() {
			ek.Encapsulate()
		}
	})
	b.Run("ParseAndEncapsulate", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ek, err := mlkem.NewEncapsulationKey1024(enc)
			if err != nil {
				b.Fatal(err)
			}
			ek.Encapsulate()
		}
	})
	b.Run("Decapsulate", func(b *testing.B) {
		b.ReportAllocs()
		_, ct := dk.EncapsulationKey().Encapsulate()
		for b.Loop() {
			if _, err := dk.Decapsulate(ct); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("GenerateKey", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := mlkem.GenerateKey1024(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
