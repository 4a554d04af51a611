package cliflag

import (
	"fmt"
	"sort"
)

// vars is the one table of the environment variables the binaries read
// for their flags: a flag name means one setting, under one variable, in
// every binary (as tailscale's envknob registers each knob once).
// "password" is no flag: the password is read from EKEM_PASSWORD or a
// file, never from argv (RefuseSecrets).
var vars = map[string]string{
	// every role's broker connection
	"broker": "EKEM_BROKER", "username": "EKEM_USERNAME", "password": "EKEM_PASSWORD",
	"password-file": "EKEM_PASSWORD_FILE", "client-id": "EKEM_CLIENT_ID", "prefix": "EKEM_PREFIX",
	TLSCA: EnvTLSCA, TLSCert: EnvTLSCert, TLSKey: EnvTLSKey,
	"log-level": "EKEM_LOG_LEVEL", "log-format": "EKEM_LOG_FORMAT",
	// issuer
	SigningKey: EnvSigningKey, NextSigningKey: EnvNextSigningKey, "store": "EKEM_STORE",
	"period": "EKEM_PERIOD", "ttl": "EKEM_TTL", "purpose": "EKEM_PURPOSE", "group": "EKEM_GROUP",
	"keep-roots": "EKEM_KEEP_ROOTS", "chunk-leaves": "EKEM_CHUNK_LEAVES", "reenroll": "EKEM_REENROLL",
	"metrics": "EKEM_METRICS", "admin-socket": "EKEM_ADMIN_SOCKET", "lease-ttl": "EKEM_LEASE_TTL",
	"enrollment": "EKEM_ENROLLMENT", "nudge": "EKEM_NUDGE",
	// device and monitor
	"id": "EKEM_DEVICE_ID", "state": "EKEM_STATE_DIR", "issuer-pub": "EKEM_ISSUER_PUB",
	"cohort-file": "EKEM_COHORT_FILE", "tpm": "EKEM_TPM", "kem": "EKEM_KEM", "skew": "EKEM_SKEW",
	"max-jump": "EKEM_MAX_JUMP", "api": "EKEM_API", "api-mode": "EKEM_API_MODE", "api-group": "EKEM_API_GROUP",
}

// Var returns the environment variable of the flag name. It panics for a
// name the table lacks: a programming error, which every command's tests
// reach when they parse its flags.
func Var(name string) string {
	v, ok := vars[name]
	if !ok {
		panic(fmt.Sprintf("cliflag: flag -%s has no environment variable in the table (vars.go)", name))
	}
	return v
}

// EnvOf returns, for FillFromEnv, the Env of each named flag: its variable
// from the table and, from old, the deprecated variable names this binary
// still reads for it.
func EnvOf(old map[string][]string, names ...string) map[string]Env {
	out := make(map[string]Env, len(names))
	for _, n := range names {
		out[n] = Env{Var: Var(n), Old: old[n]}
	}
	return out
}

// Vars returns every flag name of the table with its variable, sorted by
// flag name (for documentation and tests).
func Vars() [][2]string {
	out := make([][2]string, 0, len(vars))
	for n, v := range vars {
		out = append(out, [2]string{n, v})
	}
	sort.Slice(out, func(a, b int) bool { return out[a][0] < out[b][0] })
	return out
}
