// Package cliflag is the one flag vocabulary of entropykem's binaries: the
// names every binary uses for one setting (Names), deprecated aliases that
// still work but warn, environment variables with deprecated old names, the
// refusal of secrets on the command line, and the -version flag.
//
// One name means one thing in every binary: -tls-ca, -tls-cert and -tls-key
// are the broker TLS files; the issuer's ML-DSA key is -signing-key (and
// -next-signing-key), never -key.
package cliflag

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Flag names and environment variables shared by the binaries.
const (
	TLSCA          = "tls-ca"
	TLSCert        = "tls-cert"
	TLSKey         = "tls-key"
	SigningKey     = "signing-key"
	NextSigningKey = "next-signing-key"

	EnvTLSCA          = "EKEM_TLS_CA"
	EnvTLSCert        = "EKEM_TLS_CERT"
	EnvTLSKey         = "EKEM_TLS_KEY"
	EnvSigningKey     = "EKEM_SIGNING_KEY"
	EnvNextSigningKey = "EKEM_NEXT_SIGNING_KEY"
)

// ErrSecretInArgv reports a secret given as a command-line flag. The error
// never contains the value.
var ErrSecretInArgv = errors.New("secrets are never accepted on the command line (argv is visible to every user)")

// ErrAliasConflict reports a setting given under both its name and a
// deprecated alias.
var ErrAliasConflict = errors.New("a setting is given twice")

// alias is the flag.Value of a deprecated flag name: it sets the new flag
// and warns once.
type alias struct {
	target      flag.Value
	old, new    string
	warn        func(string)
	set, warned bool
}

func (a *alias) String() string {
	if a == nil || a.target == nil {
		return ""
	}
	return a.target.String()
}

func (a *alias) Set(v string) error {
	a.set = true
	if !a.warned && a.warn != nil {
		a.warn(fmt.Sprintf("-%s is deprecated; use -%s", a.old, a.new))
		a.warned = true
	}
	return a.target.Set(v)
}

// IsBoolFlag keeps "-old" working without a value when the target is a
// boolean flag.
func (a *alias) IsBoolFlag() bool {
	b, ok := a.target.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// Alias defines -old on fs as a deprecated alias of the already defined
// flag -new: setting it sets -new and calls warn once with a message naming
// both. It panics if -new is not defined (a programming error).
func Alias(fs *flag.FlagSet, old, new string, warn func(string)) {
	f := fs.Lookup(new)
	if f == nil {
		panic("cliflag: alias of undefined flag -" + new)
	}
	fs.Var(&alias{target: f.Value, old: old, new: new, warn: warn}, old, "deprecated: use -"+new)
}

// CheckAliases fails with ErrAliasConflict if a flag and one of its
// deprecated aliases were both given. Call it after fs.Parse.
func CheckAliases(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.Visit(func(f *flag.Flag) {
		if a, ok := f.Value.(*alias); ok && given[a.new] && err == nil {
			err = fmt.Errorf("%w: -%s and its deprecated alias -%s", ErrAliasConflict, a.new, a.old)
		}
	})
	return err
}

// IsAlias reports whether f is a deprecated alias defined by Alias.
func IsAlias(f *flag.Flag) bool {
	_, ok := f.Value.(*alias)
	return ok
}

// Env is one environment variable of a flag: Var, or else the first of the
// deprecated Old names that is set.
type Env struct {
	Var string
	Old []string
}

// Lookup returns the value of e from getenv (empty means unset), the name it
// came from, and a warning if that name is deprecated. Setting Var and an
// old name to different values is ErrAliasConflict.
func (e Env) Lookup(getenv func(string) string) (value, from, warning string, err error) {
	value, from = getenv(e.Var), e.Var
	for _, old := range e.Old {
		v := getenv(old)
		if v == "" {
			continue
		}
		if value == "" {
			return v, old, fmt.Sprintf("%s is deprecated; use %s", old, e.Var), nil
		}
		if v != value {
			return "", "", "", fmt.Errorf("%w: %s and its deprecated name %s differ", ErrAliasConflict, e.Var, old)
		}
	}
	if value == "" {
		from = ""
	}
	return value, from, "", nil
}

// FillFromEnv sets every flag of fs that was not given on the command line
// from its environment variable (env maps a flag name to its variables),
// through the flag's own Value, so both are validated alike. It returns the
// variable each value came from; warn gets one message per deprecated
// variable used. A bad value is an error naming the variable but not the
// value (it may be a secret).
func FillFromEnv(fs *flag.FlagSet, env map[string]Env, getenv func(string) string, warn func(string)) (map[string]string, error) {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) {
		given[f.Name] = true
		if a, ok := f.Value.(*alias); ok {
			given[a.new] = true
		}
	})
	from := map[string]string{}
	names := make([]string, 0, len(env))
	for n := range env {
		names = append(names, n)
	}
	sort.Strings(names) // deterministic errors and warnings
	for _, name := range names {
		if given[name] {
			continue
		}
		v, src, w, err := env[name].Lookup(getenv)
		if err != nil {
			return nil, err
		}
		if src == "" {
			continue
		}
		if w != "" && warn != nil {
			warn(w)
		}
		if err := fs.Set(name, v); err != nil {
			return nil, fmt.Errorf("%s: invalid value for -%s: %v", src, name, err)
		}
		from[name] = src
	}
	return from, nil
}

// RefuseSecrets fails with ErrSecretInArgv if args (before a "--") hold one
// of the named flags, in any of the forms -name, --name, -name=V.
func RefuseSecrets(args []string, names ...string) error {
	for _, a := range args {
		if a == "--" {
			return nil // what follows is not flags
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		n := strings.TrimLeft(a, "-")
		n, _, _ = strings.Cut(n, "=")
		for _, s := range names {
			if n == s {
				return fmt.Errorf("-%s: %w; use -password-file FILE or the EKEM_PASSWORD environment variable", s, ErrSecretInArgv)
			}
		}
	}
	return nil
}

// WarnTo returns a warn function that prints "prog: warning: MSG" to w.
func WarnTo(w io.Writer, prog string) func(string) {
	return func(msg string) { fmt.Fprintf(w, "%s: warning: %s\n", prog, msg) }
}
