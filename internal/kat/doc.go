// Package kat runs known-answer vectors from outside the project against the
// cryptographic code entropykem actually uses. It has no API; everything is
// in its tests:
//
//   - C2SP CCTV accumulated tests: 10 000 random ML-KEM-1024 (FIPS 203) and
//     ML-DSA-87 (FIPS 204) key generations, encapsulations/decapsulations and
//     signatures/verifications hashed into one SHAKE-128 digest, plus the
//     CCTV ML-KEM-1024 invalid-modulus keys and "unlucky" sampling vector.
//   - Wycheproof (C2SP/wycheproof, testvectors_v1): ML-KEM-1024 key
//     generation, encapsulation, decapsulation and key checks, ML-DSA-87
//     verification, HKDF-SHA256 (RFC 5869) and HMAC-SHA256 (RFC 2104).
//
// The implementations under test are pkg/kem (ML-KEM seeds, encapsulation
// key validation, decapsulation), pkg/signature (ML-DSA key derivation and
// public key parsing), github.com/cloudflare/circl directly where the
// project's API deliberately hides the operation (deterministic
// encapsulation and signing, expanded keys, context strings), and the
// standard library's crypto/hkdf and crypto/hmac used by pkg/keyschedule.
//
// testdata/README.md names the source repository, path, commit and licence
// of every vector file.
package kat
