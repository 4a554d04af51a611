package natsconf

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/entropykem/entropykem/broker-config/creds"
)

func nodeOpts() NodeOptions {
	return NodeOptions{
		ServerName: "nats-1", Routes: []string{"nats-1:6222", "nats-2:6222", "nats-3:6222"},
		RoutePassword: "0123456789abcdef0123",
	}
}

func TestRenderNodeShipped(t *testing.T) {
	s, err := RenderNode(nodeOpts())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"server_name: nats-1\n", "listen: 127.0.0.1:4222\n", "http: 127.0.0.1:8222\n",
		"include ./accounts.conf\n", `store_dir: "/data"`, "listen: 0.0.0.0:6222\n",
		`"nats-route://ekem-route:0123456789abcdef0123@nats-2:6222"`, "listen: 0.0.0.0:1883\n",
		"stream_replicas: 3\n", "name: ekem\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("rendered node lacks %q", want)
		}
	}
	if strings.Contains(s, "tls {") {
		t.Error("TLS block without a certificate")
	}
	o := nodeOpts()
	o.TLSCert, o.TLSKey = "/etc/nats/certs/server.crt", "/etc/nats/certs/server.key"
	if s, err = RenderNode(o); err != nil || !strings.Contains(s, `cert_file: "/etc/nats/certs/server.crt"`) {
		t.Fatalf("TLS: %v\n%s", err, s)
	}
}

func TestRenderNodeRefuses(t *testing.T) {
	cases := map[string]func(*NodeOptions){
		"no server name":      func(o *NodeOptions) { o.ServerName = "" },
		"server name spaces":  func(o *NodeOptions) { o.ServerName = "a b" },
		"no routes":           func(o *NodeOptions) { o.Routes = nil },
		"bad route":           func(o *NodeOptions) { o.Routes = []string{"nats-1"} },
		"route with userinfo": func(o *NodeOptions) { o.Routes = []string{"x@nats-1:6222"} },
		"short password":      func(o *NodeOptions) { o.RoutePassword = "short" },
		"password quote":      func(o *NodeOptions) { o.RoutePassword = `0123456789abcdef"x` },
		"store quote":         func(o *NodeOptions) { o.StoreDir = `/data"` },
		"accounts path":       func(o *NodeOptions) { o.AccountsFile = "../x.conf" },
		"cert without key":    func(o *NodeOptions) { o.TLSCert = "/c" },
		"bad port":            func(o *NodeOptions) { o.MQTTListen = "0.0.0.0:70000" },
	}
	for name, mod := range cases {
		o := nodeOpts()
		mod(&o)
		if _, err := RenderNode(o); !errors.Is(err, ErrRender) {
			t.Errorf("%s: err %v, want ErrRender", name, err)
		}
	}
}

// The accounts give each role exactly the ACL's rights, every account is
// MQTT-only, and the password hashes match the passwords.
func TestRenderAccounts(t *testing.T) {
	set, err := creds.NewSet(creds.Options{Devices: []string{"dev-a", "dev-b"}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := RenderAccounts(set)
	if err != nil {
		t.Fatal(err)
	}
	lines := map[string]string{} // user → its two lines
	parts := strings.Split(s, "{ user: ")
	for _, p := range parts[1:] {
		user := strings.Trim(strings.Fields(p)[0], `",`)
		lines[user] = p
	}
	want := map[string]string{
		"ekem-issuer": `publish: { allow: ["ekem.v1.ticket.*", "ekem.v1.root.*", "ekem.v1.epoch", "ekem.v1.issuer.online", "ekem.v1.issuer.key.*"] }, ` +
			`subscribe: { allow: ["ekem.v1.reg.*", "ekem.v1.status.*", "ekem.v1.root.*", "ekem.v1.epoch", "ekem.v1.issuer.online", "ekem.v1.issuer.key.*", "$MQTT.sub.>"] }`,
		"ekem-monitor": `publish: { deny: [">"] }, subscribe: { allow: ["ekem.v1", "ekem.v1.>", "$SYS", "$SYS.>", "$MQTT.sub.>"] }`,
		"dev-a": `publish: { allow: ["ekem.v1.reg.dev-a", "ekem.v1.status.dev-a"] }, ` +
			`subscribe: { allow: ["ekem.v1.ticket.dev-a", "ekem.v1.root.*", "ekem.v1.epoch", "ekem.v1.issuer.online", "ekem.v1.issuer.key.*", "$MQTT.sub.>"] }`,
	}
	for user, perms := range want {
		if !strings.Contains(lines[user], perms) {
			t.Errorf("%s: permissions\n%s\nwant\n%s", user, lines[user], perms)
		}
	}
	if len(lines) != 4 {
		t.Errorf("%d users, want 4", len(lines))
	}
	for _, a := range set.Accounts() {
		l := lines[a.Username]
		if !strings.Contains(l, `allowed_connection_types: ["MQTT"]`) {
			t.Errorf("%s may use other protocols than MQTT", a.Username)
		}
		if strings.Contains(l, a.Password) {
			t.Errorf("%s: plaintext password in accounts.conf", a.Username)
		}
		i := strings.Index(l, `password: "`) + len(`password: "`)
		hash := l[i : i+strings.Index(l[i:], `"`)]
		if err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(a.Password)); err != nil {
			t.Errorf("%s: hash does not match the password: %v", a.Username, err)
		}
	}
}

func TestDeviceIDWithDotRefused(t *testing.T) {
	if err := ValidateDeviceID("meter.12"); !errors.Is(err, ErrDotInDeviceID) || !strings.Contains(err.Error(), `"meter-12"`) {
		t.Fatalf("ValidateDeviceID(meter.12) = %v, want ErrDotInDeviceID suggesting meter-12", err)
	}
	if err := ValidateDeviceID("ekem-issuer"); !errors.Is(err, creds.ErrReservedName) {
		t.Fatalf("reserved name: %v", err)
	}
	if err := ValidateDeviceID("meter-12_a"); err != nil {
		t.Fatal(err)
	}
	set, err := creds.NewSet(creds.Options{Devices: []string{"meter.12"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RenderAccounts(set); !errors.Is(err, ErrDotInDeviceID) {
		t.Fatalf("RenderAccounts with meter.12: %v", err)
	}
}
