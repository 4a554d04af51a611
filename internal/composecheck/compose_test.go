// Package composecheck checks properties of the repository's
// docker-compose.yml without a Docker daemon: it loads the file with
// compose-go, the loader docker compose itself uses, and asserts which
// service mounts which secret, that every service has a healthcheck and that
// every pulled image is pinned to a version (issue #13, DESIGN.md "Identity
// on the broker").
package composecheck

import (
	"context"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// The base file, and the base file with the PostgreSQL overlay (two issuer
// instances); the tests check both.
var (
	baseFiles     = []string{"../../docker-compose.yml"}
	postgresFiles = []string{"../../docker-compose.yml", "../../docker-compose.postgres.yml"}
)

func load(t *testing.T, files []string) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions(files, cli.WithOsEnv, cli.WithProfiles([]string{"monitoring"}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("%v does not load: %v", files, err)
	}
	return p
}

// secretVolumes names every named volume holding key material, with the only
// services that may mount it. init makes and distributes them.
var secretVolumes = map[string][]string{
	"creds":          {"init"}, // every account, the CA key
	"keys":           {"init"}, // the issuer's signing key, every cohort secret
	"brokerconf":     {"init", "mosquitto"},
	"brokercerts":    {"init", "mosquitto"},
	"issuer-secrets": {"init", "issuer"},
	// issuer-2 exists only with the PostgreSQL overlay.
	"issuer-2-secrets": {"init", "issuer-2"},
	"monitor-secrets":  {"init", "fleet-exporter"},
	"dev-1-secrets":    {"init", "dev-1"},
	"dev-2-secrets":    {"init", "dev-2"},
	"dev-3-secrets":    {"init", "dev-3"},
	"dev-1-state":      {"init", "dev-1"},
	"dev-2-state":      {"init", "dev-2"},
	"dev-3-state":      {"init", "dev-3"},
	"issuerdata":       {"init", "issuer"},
}

// Which service mounts which secret volume: exactly the services listed, and
// every service except init (which makes them) mounts its secrets read-only.
func TestSecretsPerService(t *testing.T) {
	for _, files := range [][]string{baseFiles, postgresFiles} {
		t.Run(strings.Join(files, "+"), func(t *testing.T) { secretsPerService(t, load(t, files)) })
	}
}

func secretsPerService(t *testing.T, p *types.Project) {
	mounted := map[string][]string{}
	for name, s := range p.Services {
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeVolume {
				if v.Type == types.VolumeTypeBind && !v.ReadOnly {
					t.Errorf("%s: writable bind mount %s", name, v.Source)
				}
				continue
			}
			mounted[v.Source] = append(mounted[v.Source], name)
			if strings.HasSuffix(v.Source, "-secrets") || v.Source == "brokerconf" || v.Source == "brokercerts" {
				if name != "init" && !v.ReadOnly {
					t.Errorf("%s mounts %s writable", name, v.Source)
				}
			}
		}
	}
	_, overlay := p.Services["issuer-2"]
	for vol, want := range secretVolumes {
		if vol == "issuer-2-secrets" && !overlay {
			want = []string{"init"}
		}
		got := mounted[vol]
		sort.Strings(got)
		w := slices.Clone(want)
		sort.Strings(w)
		if !slices.Equal(got, w) {
			t.Errorf("volume %s is mounted by %v, want only %v", vol, got, w)
		}
	}
	// Mosquitto holds no client credential and no CA key: nothing but its
	// configuration, its certificates and its database.
	var vols []string
	for _, v := range p.Services["mosquitto"].Volumes {
		vols = append(vols, v.Source)
	}
	sort.Strings(vols)
	if want := []string{"brokercerts", "brokerconf", "brokerdata"}; !slices.Equal(vols, want) {
		t.Errorf("mosquitto mounts %v, want %v", vols, want)
	}
}

// What init copies into each service's volume: the broker gets its server
// certificate, the CRL and the password file and no key of anyone else; the
// issuer's signing key goes only to the issuer; each device gets only its
// own certificate, key and cohort secret.
func TestInitDistributesOnlyOwnMaterial(t *testing.T) {
	p := load(t, baseFiles)
	script := strings.Join(p.Services["init"].Command, "\n")
	copies := map[string]string{} // destination → the cp line
	for _, line := range strings.Split(script, "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[0] == "cp" {
			copies[f[len(f)-1]] = line
		}
	}
	want := map[string][]string{
		"/broker/certs/":            {"ca.crt", "crl.pem", "server.crt", "server.key"},
		"/broker/config/":           {"mosquitto.conf", "acl", "passwd"},
		"/secrets/issuer/":          {"ca.crt", "ekem-issuer.crt", "ekem-issuer.key", "issuer.key"},
		"/secrets/issuer-2/":        {"ca.crt", "ekem-issuer-2.crt", "ekem-issuer-2.key", "issuer.key"},
		"/secrets/monitor/":         {"ca.crt", "ekem-monitor.crt", "ekem-monitor.key", "issuer.pub"},
		"/secrets/$d/":              {"ca.crt", "$d.crt", "$d.key", "issuer.pub"},
		"/secrets/$d/cohort.secret": {"cohort-$d.secret"},
	}
	base := regexp.MustCompile(`[^/]+$`)
	for dest, files := range want {
		line, ok := copies[dest]
		if !ok {
			t.Errorf("init copies nothing to %s", dest)
			continue
		}
		f := strings.Fields(line)
		var got []string
		for _, src := range f[1 : len(f)-1] {
			got = append(got, base.FindString(src))
		}
		sort.Strings(got)
		w := slices.Clone(files)
		sort.Strings(w)
		if !slices.Equal(got, w) {
			t.Errorf("init copies %v to %s, want exactly %v", got, dest, w)
		}
	}
	if len(copies) != len(want) {
		t.Errorf("init has %d copy lines, want %d: %v", len(copies), len(want), copies)
	}
}

// Every service has a healthcheck, and every image that is pulled (not
// built here) is pinned to a full version.
func TestHealthchecksAndPinnedImages(t *testing.T) {
	for _, files := range [][]string{baseFiles, postgresFiles} {
		t.Run(strings.Join(files, "+"), func(t *testing.T) { healthchecksAndPinnedImages(t, load(t, files)) })
	}
}

func healthchecksAndPinnedImages(t *testing.T, p *types.Project) {
	built := map[string]bool{}
	for _, s := range p.Services {
		if s.Build != nil {
			built[s.Image] = true
		}
	}
	pinned := regexp.MustCompile(`:v?[0-9]+\.[0-9]+(\.[0-9]+)?$|@sha256:[0-9a-f]{64}$`) // at least major.minor (PostgreSQL versions are two numbers)
	for name, s := range p.Services {
		if hc := s.HealthCheck; hc == nil || hc.Disable || len(hc.Test) == 0 {
			t.Errorf("%s has no healthcheck", name)
		}
		if !built[s.Image] && !pinned.MatchString(s.Image) {
			t.Errorf("%s: image %q is not pinned to a version", name, s.Image)
		}
		// Services read their files from their own /secrets volume, not
		// from init's.
		if name != "init" {
			for _, arg := range s.Command {
				if strings.Contains(arg, "/creds/") || strings.Contains(arg, "/keys/") {
					t.Errorf("%s: argument %q points into init's volumes", name, arg)
				}
			}
		}
	}
	if len(p.Services) < 9 {
		t.Errorf("loaded %d services, want the broker, init, issuer, three devices and the monitoring profile", len(p.Services))
	}
}
