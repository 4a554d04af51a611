package creds

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadPasswordFile: a bare password and a mkcreds account file both
// work; a KEY=VALUE file that is not an account file, another account's
// file and an empty file are errors that never show the password.
func TestReadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	acct, _ := NewAccount("dev-1")
	env := write("dev-1.env", string(acct.Marshal()))
	for _, tc := range []struct {
		path, user string
		want       Account
	}{
		{write("bare", "s3cret\n"), "", Account{Password: "s3cret"}},
		{write("crlf", "s3cret\r\n"), "dev-1", Account{Password: "s3cret"}},
		{env, "", acct},
		{env, "dev-1", acct},
		{write("commented.env", "# from mkcreds\n"+string(acct.Marshal())), "", acct},
	} {
		got, err := ReadPasswordFile(tc.path, tc.user)
		if err != nil || got != tc.want {
			t.Errorf("%s: %+v, %v", filepath.Base(tc.path), got, err)
		}
	}
	for _, tc := range []struct {
		path, user, want string
	}{
		{write("mqtt.env", "EKEM_MQTT_USERNAME=dev-1\nEKEM_MQTT_PASSWORD=hunter2\n"), "", "unexpected line 1"},
		{write("nopass.env", "EKEM_USERNAME=dev-1\n"), "", "needs EKEM_USERNAME and EKEM_PASSWORD"},
		{env, "dev-2", `account file of "dev-1", but the username is "dev-2"`},
		{write("empty", "\n"), "", "empty"},
		{write("two", "hunter2\nhunter3\n"), "", "holds one line"},
		{filepath.Join(dir, "missing"), "", "no such file"},
	} {
		_, err := ReadPasswordFile(tc.path, tc.user)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", filepath.Base(tc.path), err, tc.want)
		}
		if err != nil && (strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), acct.Password)) {
			t.Errorf("%s: error shows the password: %v", filepath.Base(tc.path), err)
		}
	}
	if _, err := ReadPasswordFile(write("mqtt2.env", "EKEM_MQTT_PASSWORD=x\n"), ""); !errors.Is(err, ErrBadAccountFile) {
		t.Errorf("not ErrBadAccountFile: %v", err)
	}
}
