package cliflag

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

func newSet(warnings *[]string) (*flag.FlagSet, *string, *bool) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	key := fs.String(TLSKey, "", "")
	v := fs.Bool("verbose", false, "")
	warn := func(s string) { *warnings = append(*warnings, s) }
	Alias(fs, "key", TLSKey, warn)
	Alias(fs, "v", "verbose", warn)
	return fs, key, v
}

func TestAlias(t *testing.T) {
	var w []string
	fs, key, v := newSet(&w)
	if err := fs.Parse([]string{"-key", "a.pem", "-v"}); err != nil {
		t.Fatal(err)
	}
	if *key != "a.pem" || !*v || CheckAliases(fs) != nil {
		t.Fatalf("key %q verbose %v", *key, *v)
	}
	if len(w) != 2 || w[0] != "-key is deprecated; use -tls-key" {
		t.Fatalf("warnings %q", w)
	}
	w = nil
	fs, _, _ = newSet(&w)
	fs.Parse([]string{"-key", "a", "-tls-key", "b"})
	if err := CheckAliases(fs); !errors.Is(err, ErrAliasConflict) || !strings.Contains(err.Error(), "-tls-key and its deprecated alias -key") {
		t.Fatalf("both names: %v", err)
	}
}

func TestFillFromEnv(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	var w []string
	spec := map[string]Env{TLSKey: {Var: EnvTLSKey, Old: []string{"EKEM_KEY"}}}

	fs, key, _ := newSet(&w)
	env["EKEM_KEY"] = "old.pem"
	from, err := FillFromEnv(fs, spec, getenv, func(s string) { w = append(w, s) })
	if err != nil || *key != "old.pem" || from[TLSKey] != "EKEM_KEY" || len(w) != 1 || w[0] != "EKEM_KEY is deprecated; use EKEM_TLS_KEY" {
		t.Fatalf("old variable: %q %v %v %q", *key, from, err, w)
	}

	fs, key, _ = newSet(&w)
	env[EnvTLSKey] = "new.pem"
	if _, err := FillFromEnv(fs, spec, getenv, nil); !errors.Is(err, ErrAliasConflict) {
		t.Fatalf("old and new variables differ: %v", err)
	}
	env["EKEM_KEY"] = "new.pem"
	if _, err := FillFromEnv(fs, spec, getenv, nil); err != nil || *key != "new.pem" {
		t.Fatalf("the same value under both names: %q %v", *key, err)
	}

	// A flag on the command line, under either name, wins over the environment.
	fs, key, _ = newSet(&w)
	fs.Parse([]string{"-key", "flag.pem"})
	if _, err := FillFromEnv(fs, spec, getenv, nil); err != nil || *key != "flag.pem" {
		t.Fatalf("flag over environment: %q %v", *key, err)
	}
}

func TestRefuseSecrets(t *testing.T) {
	for _, args := range [][]string{{"-password", "hunter2"}, {"-x", "1", "--password=hunter2"}, {"-password=hunter2"}} {
		err := RefuseSecrets(args, "password")
		if !errors.Is(err, ErrSecretInArgv) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: %v", args, err)
		}
	}
	for _, args := range [][]string{{"-password-file", "f"}, {"--", "-password", "x"}, {"-id", "password"}} {
		if err := RefuseSecrets(args, "password"); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
}

// TestOneVariablePerFlag: no two flags share an environment variable, and
// every variable is EKEM_ and the flag's name in capitals (one spelling
// to guess), but for the two whose variable says more.
func TestOneVariablePerFlag(t *testing.T) {
	seen := map[string]string{}
	for _, nv := range Vars() {
		n, v := nv[0], nv[1]
		if other, dup := seen[v]; dup {
			t.Errorf("-%s and -%s both read %s", other, n, v)
		}
		seen[v] = n
		want := "EKEM_" + strings.ToUpper(strings.ReplaceAll(n, "-", "_"))
		if v != want && n != "id" && n != "state" {
			t.Errorf("-%s reads %s, want %s", n, v, want)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("Var of an unknown flag did not panic")
		}
	}()
	Var("no-such-flag")
}
