package creds

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"
)

// Account is one broker login.
type Account struct {
	Username string
	Password string
}

// passwordBytes of randomness per password (256 bits), encoded as unpadded
// base64url, so a password is 43 characters of [A-Za-z0-9_-].
const passwordBytes = 32

// Keys of a credentials file.
const (
	EnvUsername = "EKEM_USERNAME"
	EnvPassword = "EKEM_PASSWORD"
)

// maxAccountFile bounds ReadAccountFile: the file holds two short lines.
const maxAccountFile = 4096

// NewAccount returns an account for username with a fresh random password.
// username must pass ValidateAccountName.
func NewAccount(username string) (Account, error) {
	if err := ValidateAccountName(username); err != nil {
		return Account{}, err
	}
	b := make([]byte, passwordBytes)
	if _, err := rand.Read(b); err != nil {
		return Account{}, fmt.Errorf("creds: password: %w", err)
	}
	return Account{Username: username, Password: base64.RawURLEncoding.EncodeToString(b)}, nil
}

// Marshal renders the account as a credentials file, in the KEY=value form
// that systemd's EnvironmentFile= and a POSIX shell both read:
//
//	EKEM_USERNAME=dev-1
//	EKEM_PASSWORD=<43 characters>
func (a Account) Marshal() []byte {
	return []byte(EnvUsername + "=" + a.Username + "\n" + EnvPassword + "=" + a.Password + "\n")
}

// ParseAccount parses what Marshal writes. Blank lines and lines starting with
// '#' are ignored; any other key, a repeated key or a missing one fails with
// ErrBadAccountFile. Error messages never contain the password.
func ParseAccount(data []byte) (Account, error) {
	if len(data) > maxAccountFile {
		return Account{}, fmt.Errorf("%w: larger than %d bytes", ErrBadAccountFile, maxAccountFile)
	}
	var a Account
	var haveUser, havePass bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		switch {
		case ok && key == EnvUsername && !haveUser:
			a.Username, haveUser = value, true
		case ok && key == EnvPassword && !havePass:
			a.Password, havePass = value, true
		default:
			return Account{}, fmt.Errorf("%w: unexpected line %d", ErrBadAccountFile, n)
		}
	}
	if !haveUser || !havePass || a.Password == "" {
		return Account{}, fmt.Errorf("%w: needs %s and %s", ErrBadAccountFile, EnvUsername, EnvPassword)
	}
	if err := ValidateAccountName(a.Username); err != nil {
		return Account{}, fmt.Errorf("%w: %w", ErrBadAccountFile, err)
	}
	return a, nil
}

// ReadAccountFile reads a credentials file written by WriteFiles.
func ReadAccountFile(path string) (Account, error) {
	f, err := os.Open(path)
	if err != nil {
		return Account{}, fmt.Errorf("creds: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxAccountFile+1))
	if err != nil {
		return Account{}, fmt.Errorf("creds: %w", err)
	}
	return ParseAccount(data)
}
