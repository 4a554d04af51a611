package composecheck

// The "cluster" profile of docker-compose.yml (issue #17): three NATS nodes
// rendered by mkcreds -nats-nodes, and an issuer and devices that differ
// from the Mosquitto fleet only in broker URL and credentials. Loaded with
// compose-go, the loader docker compose itself uses, without a daemon.

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

const clusterComposeFile = "../../docker-compose.yml"

func loadProfile(t *testing.T, profiles ...string) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{clusterComposeFile}, cli.WithOsEnv, cli.WithProfiles(profiles))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml does not load with profiles %v: %v", profiles, err)
	}
	return p
}

func TestClusterProfile(t *testing.T) {
	p := loadProfile(t, "cluster")
	nodes := []string{"nats-1", "nats-2", "nats-3"}
	for i, n := range nodes {
		s, ok := p.Services[n]
		if !ok {
			t.Fatalf("no service %s in the cluster profile", n)
		}
		// The release the tests run (internal/natstest.MinVersion): 2.9
		// loses acknowledged retained messages when a node dies.
		if s.Image != "nats:2.15.3-alpine" {
			t.Errorf("%s: image %s, want nats:2.15.3-alpine", n, s.Image)
		}
		if want := []string{"nats-server", "-c", "/etc/nats/" + n + ".conf"}; !slices.Equal(s.Command, want) {
			t.Errorf("%s: command %v, want %v", n, s.Command, want)
		}
		if s.HealthCheck == nil || !strings.Contains(strings.Join(s.HealthCheck.Test, " "), "/healthz") {
			t.Errorf("%s: no /healthz healthcheck", n)
		}
		if net := s.Networks["default"]; net == nil || !slices.Contains(net.Aliases, "nats") {
			t.Errorf("%s: not reachable as \"nats\"", n)
		}
		var conf, data bool
		for _, v := range s.Volumes {
			switch {
			case v.Source == "nats-conf" && v.Target == "/etc/nats":
				conf = v.ReadOnly
			case v.Source == nodes[i]+"-data" && v.Target == "/data":
				data = true
			case strings.HasPrefix(v.Source, "nats-"):
				t.Errorf("%s mounts %s", n, v.Source) // another node's store
			}
		}
		if !conf || !data {
			t.Errorf("%s: nats-conf read-only %v, own store %v", n, conf, data)
		}
		if d := s.DependsOn["cluster-init"]; d.Condition != types.ServiceConditionCompletedSuccessfully {
			t.Errorf("%s does not wait for cluster-init", n)
		}
	}
	init := p.Services["cluster-init"]
	cmd := strings.Join(init.Command, " ")
	if !strings.Contains(cmd, "-nats-nodes nats-1,nats-2,nats-3") || !strings.Contains(cmd, "-hosts nats,") {
		t.Errorf("cluster-init does not render the three nodes with a certificate for \"nats\": %s", cmd)
	}
	// The fleet: the same image and binaries, only the broker and the
	// credentials differ; each waits for three healthy nodes.
	for _, name := range []string{"cluster-issuer", "cluster-dev-1", "cluster-dev-2", "cluster-dev-3"} {
		s, ok := p.Services[name]
		if !ok {
			t.Fatalf("no service %s", name)
		}
		if s.Image != p.Services["issuer"].Image {
			t.Errorf("%s: image %s, want the Mosquitto fleet's %s", name, s.Image, p.Services["issuer"].Image)
		}
		c := strings.Join(s.Command, " ")
		if !strings.Contains(c, "-broker=ssl://nats:1883") {
			t.Errorf("%s: broker is not ssl://nats:1883: %s", name, c)
		}
		for _, n := range nodes {
			if s.DependsOn[n].Condition != types.ServiceConditionHealthy {
				t.Errorf("%s does not wait for %s to be healthy", name, n)
			}
		}
		for _, v := range s.Volumes {
			if v.Source == "cluster-creds" && !v.ReadOnly {
				t.Errorf("%s mounts the credentials writable", name)
			}
		}
	}
	// Without the profile none of it starts.
	base := loadProfile(t)
	for name := range p.Services {
		if _, ok := base.Services[name]; ok && (strings.HasPrefix(name, "nats-") || strings.HasPrefix(name, "cluster-")) {
			t.Errorf("%s starts without the cluster profile", name)
		}
	}
}
