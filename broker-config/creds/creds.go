// Package creds makes broker credentials for entropykem: Mosquitto 2 password
// files, per-account credential files, and a small X.509 CA whose client
// certificates carry the account name as subject CN (for Mosquitto's
// use_identity_as_username). It is used by the mkcreds tool and by the test
// harness internal/mosquittotest.
package creds

import (
	"errors"
	"fmt"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
)

// Sentinel errors; callers tell them apart with errors.Is.
var (
	// ErrInvalidDeviceID: not 1–64 of [A-Za-z0-9._-] starting alphanumeric.
	ErrInvalidDeviceID = errors.New("creds: invalid device id")
	// ErrReservedName: the id is kept for service accounts (it starts,
	// case-insensitively, with ekem-issuer or ekem-monitor).
	ErrReservedName = errors.New("creds: reserved account name")
	// ErrBadHash: a password-file hash is not a Mosquitto 2 "$7$" hash.
	ErrBadHash = errors.New("creds: malformed password hash")
	// ErrBadAccountFile: a credentials file is malformed.
	ErrBadAccountFile = errors.New("creds: malformed credentials file")
)

// MaxDeviceIDLen is the longest device id (DESIGN.md, Topics).
const MaxDeviceIDLen = 64

// ValidateDeviceID checks a device id as DESIGN.md defines it: 1–64 of
// [A-Za-z0-9._-], starting alphanumeric. It also refuses every name that
// starts with ekem-issuer or ekem-monitor in any letter case
// (brokerconfig.IsReservedName): the ACL gives the service instances their
// own rules, so a device holding one would get the issuer's or the
// monitor's rights. The id becomes the broker username and the topic
// level that the ACL's %u patterns match, so '/', '+', '#' and spaces must
// never pass.
func ValidateDeviceID(id string) error {
	if err := validateName(id); err != nil {
		return err
	}
	if brokerconfig.IsReservedName(id) {
		return fmt.Errorf("%w: %q is a service account", ErrReservedName, id)
	}
	return nil
}

// ValidateAccountName checks any broker username this package writes: a
// device id, or a service instance (ekem-issuer, ekem-issuer-2, …,
// ekem-monitor, ekem-monitor-2, …; brokerconfig.ServiceRole).
func ValidateAccountName(name string) error {
	if brokerconfig.ServiceRole(name) != "" {
		return nil
	}
	return ValidateDeviceID(name)
}

func validateName(id string) error {
	if len(id) == 0 || len(id) > MaxDeviceIDLen {
		return fmt.Errorf("%w: length %d, want 1 to %d", ErrInvalidDeviceID, len(id), MaxDeviceIDLen)
	}
	if !isAlnum(id[0]) {
		return fmt.Errorf("%w: %q must start with a letter or digit", ErrInvalidDeviceID, id)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("%w: %q has a character outside [A-Za-z0-9._-] at offset %d", ErrInvalidDeviceID, id, i)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
