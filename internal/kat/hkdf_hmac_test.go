package kat

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"testing"
)

type hkdfTest struct {
	testCase
	IKM  hexBytes `json:"ikm"`
	Salt hexBytes `json:"salt"`
	Info hexBytes `json:"info"`
	Size int      `json:"size"`
	OKM  hexBytes `json:"okm"`
}

type hkdfGroup struct {
	Type    string     `json:"type"`
	Source  source     `json:"source"`
	KeySize int        `json:"keySize"`
	Tests   []hkdfTest `json:"tests"`
}

// TestWycheproofHKDFSHA256 runs hkdf_sha256_test.json through
// crypto/hkdf.Key with SHA-256, the call pkg/keyschedule makes (RFC 5869
// Extract then Expand). Valid cases must give okm exactly; the invalid ones
// ask for more than 255·HashLen bytes (RFC 5869 §2.3) and must be refused
// with an error.
func TestWycheproofHKDFSHA256(t *testing.T) {
	f := loadWycheproof[hkdfGroup](t, "hkdf_sha256_test.json", "HKDF-SHA-256", "hkdf_test_schema_v1.json")
	c := &tally{name: "hkdf_sha256_test.json"}
	for _, g := range f.TestGroups {
		for _, tc := range g.Tests {
			checkOutcome(t, c, tc.testCase, hkdfCase(tc))
		}
	}
	c.done(t, f.NumberOfTests)
}

func hkdfCase(tc hkdfTest) outcome {
	okm, err := hkdf.Key(sha256.New, tc.IKM, tc.Salt, string(tc.Info), tc.Size)
	if err != nil {
		return rejected("hkdf.Key: " + err.Error())
	}
	if len(okm) != tc.Size || !bytes.Equal(okm, tc.OKM) {
		return mismatch("okm differs")
	}
	return accepted()
}

type macTest struct {
	testCase
	Key hexBytes `json:"key"`
	Msg hexBytes `json:"msg"`
	Tag hexBytes `json:"tag"`
}

type macGroup struct {
	Type    string    `json:"type"`
	Source  source    `json:"source"`
	KeySize int       `json:"keySize"`
	TagSize int       `json:"tagSize"`
	Tests   []macTest `json:"tests"`
}

// TestWycheproofHMACSHA256 runs hmac_sha256_test.json through crypto/hmac
// with SHA-256 (RFC 2104), as pkg/keyschedule and pkg/ratchet use it.
// Groups with tagSize 128 check the leftmost 16 bytes (RFC 2104 §5). The tag
// is checked the way the project checks tags, with hmac.Equal: a valid case
// must match, and every invalid case (a modified tag) must not.
func TestWycheproofHMACSHA256(t *testing.T) {
	f := loadWycheproof[macGroup](t, "hmac_sha256_test.json", "HMACSHA256", "mac_test_schema_v1.json")
	c := &tally{name: "hmac_sha256_test.json"}
	for _, g := range f.TestGroups {
		if g.TagSize%8 != 0 || g.TagSize <= 0 || g.TagSize > 8*sha256.Size {
			t.Fatalf("tag size %d bits", g.TagSize)
		}
		for _, tc := range g.Tests {
			checkOutcome(t, c, tc.testCase, hmacCase(tc, g.TagSize/8))
		}
	}
	c.done(t, f.NumberOfTests)
}

func hmacCase(tc macTest, tagLen int) outcome {
	m := hmac.New(sha256.New, tc.Key)
	m.Write(tc.Msg)
	if !hmac.Equal(m.Sum(nil)[:tagLen], tc.Tag) {
		return rejected("tag does not verify")
	}
	return accepted()
}
