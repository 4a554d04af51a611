package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	brokerconfig "github.com/entropykem/entropykem/broker-config"
	"github.com/entropykem/entropykem/broker-config/creds"
)

const renderHelp = `usage: mkcreds render-config [-layout debian|docker] [-config-dir D] [-cert-dir D] [-data-dir D]
                             [-port N] [-tls-port N] [-tls-host ADDR] [-user NAME] [-root DIR]
                             [-out FILE | -creds DIR -install]

Renders broker-config/mosquitto.conf for a directory layout: only the
listener ports, the TLS bind address, the directories of passwd, acl,
certificates and persistence, and the "user" line change; every security
setting stays as shipped. It prints the file (or writes -out FILE).

Layouts:
  docker   /mosquitto/config/{mosquitto.conf,passwd,acl}, /mosquitto/certs/,
           /mosquitto/data/ (the eclipse-mosquitto image; no user line)
  debian   /etc/mosquitto/{mosquitto.conf,passwd,acl}, /etc/mosquitto/certs/,
           /var/lib/mosquitto/, user mosquitto (Debian's mosquitto package;
           its systemd unit runs mosquitto -c /etc/mosquitto/mosquitto.conf)

-install also installs, from the credentials directory -creds, what the
broker reads, replacing the files there: mosquitto.conf, passwd and acl in
the config directory, ca.crt, server.crt and server.key in the certificate
directory, and creates the data directory. Started as root, Mosquitto drops
to -user before it reads them, so (when run as root) passwd and server.key
are installed owned by root, group of -user, mode 0640; the rest 0644; the
data directory is owned by -user, mode 0750. Reload the broker after
"mkcreds add" or "remove" (SIGHUP) or restart it after a config change.
-root DIR puts every path under DIR (a staging tree, or a test).
`

// layout is a broker host's directory layout.
type layout struct {
	conf                     string // path of mosquitto.conf
	configDir, certDir, data string
	user                     string
}

var layouts = map[string]layout{
	"docker": {conf: "/mosquitto/config/mosquitto.conf", configDir: "/mosquitto/config", certDir: "/mosquitto/certs", data: "/mosquitto/data"},
	"debian": {conf: "/etc/mosquitto/mosquitto.conf", configDir: "/etc/mosquitto", certDir: "/etc/mosquitto/certs", data: "/var/lib/mosquitto", user: "mosquitto"},
}

// cmdRenderConfig renders (and with -install installs) mosquitto.conf.
func cmdRenderConfig(args []string, stdout, _ io.Writer) error {
	fs := newFlagSet("render-config", renderHelp, stdout)
	name := fs.String("layout", "docker", "directory layout: docker or debian")
	configDir := fs.String("config-dir", "", "directory of passwd and acl (and mosquitto.conf) (default: the layout's)")
	certDir := fs.String("cert-dir", "", "directory of ca.crt, server.crt, server.key (default: the layout's)")
	dataDir := fs.String("data-dir", "", "persistence directory (default: the layout's)")
	port := fs.Int("port", brokerconfig.ShippedPasswordPort, "password listener port (bound to 127.0.0.1)")
	tlsPort := fs.Int("tls-port", brokerconfig.ShippedTLSPort, "TLS listener port")
	tlsHost := fs.String("tls-host", "", "bind the TLS listener to this address (default: all)")
	userName := fs.String("user", "", "user Mosquitto drops to when started as root (default: the layout's)")
	root := fs.String("root", "", "put every path under this directory")
	out := fs.String("out", "", "write mosquitto.conf here instead of stdout")
	credsDir := fs.String("creds", "", "with -install: the credentials directory made by mkcreds init")
	install := fs.Bool("install", false, "install mosquitto.conf, passwd, acl and the certificates (needs -creds)")
	if err := parse(fs, args); err != nil {
		return err
	}
	l, ok := layouts[*name]
	switch {
	case !ok:
		return usageErr("-layout must be docker or debian, got %q", *name)
	case fs.NArg() != 0:
		return usageErr("unexpected argument %q", fs.Arg(0))
	case *install && *credsDir == "":
		return usageErr("-install needs -creds DIR")
	case *install && *out != "":
		return usageErr("-install writes mosquitto.conf into the config directory; -out is for printing only")
	case *root != "" && !filepath.IsAbs(*root):
		return usageErr("-root must be an absolute path")
	}
	if *configDir != "" {
		l.configDir, l.conf = *configDir, filepath.Join(*configDir, "mosquitto.conf")
	}
	if *certDir != "" {
		l.certDir = *certDir
	}
	if *dataDir != "" {
		l.data = *dataDir
	}
	if *userName != "" {
		l.user = *userName
	}
	at := func(p string) string { return filepath.Join(*root, p) }
	conf, err := brokerconfig.RenderConfig(brokerconfig.RenderOptions{
		ConfigDir: at(l.configDir), CertDir: at(l.certDir), DataDir: at(l.data),
		PasswordPort: *port, TLSPort: *tlsPort, TLSHost: *tlsHost, User: l.user,
	})
	if err != nil {
		return usageErr("%v", err)
	}
	if !*install {
		if *out == "" {
			_, err := io.WriteString(stdout, conf)
			return err
		}
		return creds.ReplaceFile(*out, []byte(conf), 0o644)
	}
	return installBroker(*credsDir, l, at, conf, stdout)
}

// installBroker installs conf and what the broker reads from credsDir.
func installBroker(credsDir string, l layout, at func(string) string, conf string, stdout io.Writer) error {
	owner, err := brokerOwner(l.user)
	if err != nil {
		return err
	}
	passwd, err := os.ReadFile(creds.PasswordFile(credsDir))
	if err != nil {
		return fmt.Errorf("-creds: %w", err)
	}
	// The directory's ACL: the shipped one with its service instances and
	// revoked accounts; the shipped one for a directory made before mkcreds
	// wrote an ACL.
	acl, err := os.ReadFile(creds.ACLFile(credsDir))
	if errors.Is(err, os.ErrNotExist) {
		acl, err = []byte(brokerconfig.ACL()), nil
	}
	if err != nil {
		return fmt.Errorf("-creds: %w", err)
	}
	files := []struct {
		path    string
		data    []byte
		private bool
	}{
		{at(l.conf), []byte(conf), false},
		{at(filepath.Join(l.configDir, brokerconfig.PasswordFileName)), passwd, true},
		{at(filepath.Join(l.configDir, brokerconfig.ACLFileName)), acl, false},
	}
	certs := []struct {
		name    string
		private bool
	}{{brokerconfig.CAFileName, false}, {brokerconfig.CRLFileName, false}, {brokerconfig.ServerCertName, false}, {brokerconfig.ServerKeyName, true}}
	for _, c := range certs {
		b, err := os.ReadFile(filepath.Join(creds.CertDir(credsDir), c.name))
		if errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stdout, "warning: %s has no %s (made by mkcreds init -ca); install your PKI's in %s\n", credsDir, c.name, at(l.certDir))
			continue
		}
		if err != nil {
			return fmt.Errorf("-creds: %w", err)
		}
		files = append(files, struct {
			path    string
			data    []byte
			private bool
		}{at(filepath.Join(l.certDir, c.name)), b, c.private})
	}
	for _, d := range []string{filepath.Dir(at(l.conf)), at(l.configDir), at(l.certDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	for _, f := range files {
		mode := os.FileMode(0o644)
		if f.private {
			mode = 0o640
		}
		if err := creds.ReplaceFile(f.path, f.data, mode); err != nil {
			return err
		}
		if err := owner.chown(f.path); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "installed %s (mode %04o%s)\n", f.path, mode, owner.describe())
	}
	// The parents as a system has them (/var/lib is 0755); only the data
	// directory itself belongs to the broker's user.
	if err := os.MkdirAll(filepath.Dir(at(l.data)), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(at(l.data), 0o750); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := owner.chownData(at(l.data)); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "data directory %s\n", at(l.data))
	fmt.Fprintf(stdout, "hint: start or restart Mosquitto with -c %s; after mkcreds add/remove, reload it (SIGHUP)\n", at(l.conf))
	return nil
}

// owner is who the broker's files belong to: with root and a -user, root
// and the user's group, so the broker reads private files after it dropped
// privileges; otherwise whoever runs mkcreds (the broker runs as them).
type owner struct {
	active   bool
	uid, gid int
	user     string
}

func brokerOwner(name string) (owner, error) {
	if name == "" || os.Geteuid() != 0 {
		return owner{}, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return owner{}, fmt.Errorf("-user %s: %w (create it, or give another -user)", name, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return owner{}, fmt.Errorf("-user %s: non-numeric uid or gid", name)
	}
	return owner{active: true, uid: uid, gid: gid, user: name}, nil
}

func (o owner) chown(path string) error {
	if !o.active {
		return nil
	}
	return os.Chown(path, 0, o.gid)
}

func (o owner) chownData(dir string) error {
	if !o.active {
		return nil
	}
	return os.Chown(dir, o.uid, o.gid)
}

func (o owner) describe() string {
	if !o.active {
		return ""
	}
	return ", root:" + o.user + " group"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
