package creds

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
)

// MaxPasswordFile bounds a password file before it is read.
const MaxPasswordFile = maxAccountFile

// ReadPasswordFile returns the broker account held in path, which is
// either a bare password (one line; a trailing newline is dropped) or an
// account file as mkcreds writes it (accounts/NAME.env: EKEM_USERNAME=…,
// EKEM_PASSWORD=…). A file whose first non-blank line looks like KEY=VALUE
// with an upper-case KEY is read as an account file, so a malformed one
// (another key name, a missing password) is an error instead of a wrong
// password sent to the broker. If username is not empty and the file is an
// account file for another account, that is an error too. Errors never
// contain the password. The returned Username is empty for a bare password.
func ReadPasswordFile(path, username string) (Account, error) {
	f, err := os.Open(path)
	if err != nil {
		return Account{}, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxPasswordFile+1))
	if err != nil {
		return Account{}, err
	}
	if len(b) > MaxPasswordFile {
		return Account{}, fmt.Errorf("%s: larger than %d bytes", path, MaxPasswordFile)
	}
	if looksLikeEnvFile(b) {
		a, err := ParseAccount(b)
		if err != nil {
			return Account{}, fmt.Errorf("%s: %w (an account file holds %s=NAME and %s=PASSWORD, as mkcreds writes it)", path, err, EnvUsername, EnvPassword)
		}
		if username != "" && a.Username != username {
			return Account{}, fmt.Errorf("%s: account file of %q, but the username is %q", path, a.Username, username)
		}
		return a, nil
	}
	p := strings.TrimRight(string(b), "\r\n")
	switch {
	case p == "":
		return Account{}, fmt.Errorf("%s: empty", path)
	case strings.ContainsAny(p, "\r\n"):
		return Account{}, fmt.Errorf("%s: a password file holds one line (or is an account file from mkcreds)", path)
	}
	return Account{Password: p}, nil
}

// looksLikeEnvFile reports whether the first line that is neither blank
// nor a comment is KEY=… with KEY of upper-case letters, digits and '_'.
func looksLikeEnvFile(b []byte) bool {
	for _, line := range bytes.Split(b, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		key, _, ok := bytes.Cut(line, []byte("="))
		if !ok || len(key) == 0 {
			return false
		}
		for _, c := range key {
			if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				return false
			}
		}
		return true
	}
	return false
}
