package creds

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
)

// Mosquitto 2 password hash parameters, as mosquitto_passwd 2.0 writes them
// (the creds tests check this against mosquitto_passwd output): "$7$" = PBKDF2-HMAC-SHA512, 101 iterations, a 12-byte
// salt and a 64-byte hash, both in standard base64 with padding:
//
//	username:$7$101$<base64 salt>$<base64 hash>
//
// 101 iterations is weak against guessing a human password, but every
// password this package makes is 256 random bits, so the count only sets what
// the broker pays per CONNECT; a fleet reconnecting at once keeps it cheap.
const (
	HashIterations = 101
	saltLen        = 12
	hashLen        = 64
	hashPrefix     = "$7$"
	maxIterations  = 1 << 20 // refuse absurd counts from a hostile file
)

// HashPassword returns the Mosquitto 2 "$7$" hash of password with a fresh
// random salt.
func HashPassword(password string) (string, error) {
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("creds: salt: %w", err)
	}
	return hashWithSalt(password, salt, HashIterations)
}

func hashWithSalt(password string, salt []byte, iterations int) (string, error) {
	h, err := pbkdf2.Key(sha512.New, password, salt, iterations, hashLen)
	if err != nil {
		return "", fmt.Errorf("creds: pbkdf2: %w", err)
	}
	enc := base64.StdEncoding
	return hashPrefix + strconv.Itoa(iterations) + "$" + enc.EncodeToString(salt) + "$" + enc.EncodeToString(h), nil
}

// VerifyPassword reports whether password matches a "$7$" hash, as Mosquitto
// would check it. The comparison is constant-time. It fails with ErrBadHash if
// hash is malformed.
func VerifyPassword(hash, password string) (bool, error) {
	iterations, salt, want, err := parseHash(hash)
	if err != nil {
		return false, err
	}
	got, err := pbkdf2.Key(sha512.New, password, salt, iterations, len(want))
	if err != nil {
		return false, fmt.Errorf("creds: pbkdf2: %w", err)
	}
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

func parseHash(hash string) (iterations int, salt, sum []byte, err error) {
	rest, ok := strings.CutPrefix(hash, hashPrefix)
	if !ok {
		return 0, nil, nil, fmt.Errorf("%w: not a $7$ hash", ErrBadHash)
	}
	parts := strings.Split(rest, "$")
	if len(parts) != 3 {
		return 0, nil, nil, fmt.Errorf("%w: want $7$iterations$salt$hash", ErrBadHash)
	}
	iterations, err = strconv.Atoi(parts[0])
	if err != nil || iterations < 1 || iterations > maxIterations {
		return 0, nil, nil, fmt.Errorf("%w: bad iteration count", ErrBadHash)
	}
	salt, err = base64.StdEncoding.DecodeString(parts[1])
	if err != nil || len(salt) == 0 {
		return 0, nil, nil, fmt.Errorf("%w: bad salt", ErrBadHash)
	}
	sum, err = base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(sum) != hashLen {
		return 0, nil, nil, fmt.Errorf("%w: bad hash", ErrBadHash)
	}
	return iterations, salt, sum, nil
}

// MarshalPasswordFile renders a Mosquitto password file for accounts, one
// "username:hash" line each, in the given order. Every username must pass
// ValidateAccountName and appear once.
func MarshalPasswordFile(accounts []Account) ([]byte, error) {
	var b strings.Builder
	seen := make(map[string]bool, len(accounts))
	for _, a := range accounts {
		if err := ValidateAccountName(a.Username); err != nil {
			return nil, err
		}
		if seen[a.Username] {
			return nil, fmt.Errorf("creds: duplicate account %q", a.Username)
		}
		seen[a.Username] = true
		h, err := HashPassword(a.Password)
		if err != nil {
			return nil, err
		}
		b.WriteString(a.Username + ":" + h + "\n")
	}
	return []byte(b.String()), nil
}
