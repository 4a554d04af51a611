// Command cohort-telemetry is an example application of a cohort group key
// (schema/PROTOCOL.md §7.7, §7.8): devices of one cohort publish sealed
// telemetry on the cohort's application topic, and a backend that joined
// the cohort as a member opens it. It talks to its own device agent only
// through the local key API (ekem-device run -api unix:PATH: HTTP + JSON on
// a Unix socket), as a program in any language would, and to the broker
// with its own MQTT account.
//
//	cohort-telemetry publish -api unix:/run/ekem/keys.sock -broker tcp://broker:1883 -user dev-a-app [-n 3] [-every 1s]
//	cohort-telemetry read    -api unix:/run/ekem/keys.sock -broker tcp://broker:1883 -user backend-1-app [-n 0] [-timeout 0]
//
// The MQTT password is read from EKEM_PASSWORD. publish sends its readings
// to ekem/v1/app/{cohort}/{account}; read subscribes to ekem/v1/app/{cohort}/+
// and prints one line per envelope it opens:
//
//	opened sender=dev-a epoch=7 ctr=0 envelope=<hex>: {"device":"dev-a","seq":0,"celsius":21.5}
//
// and "refused ..." for one the key API refuses (not of the cohort, a
// replay, a forgery). The broker's ACL (brokerconfig.CohortSection) keeps
// the topics to the cohort's accounts; the group key keeps the content to
// the cohort's members, away from the broker and the issuer.
//
// It is written as an application outside this module would be: it uses
// paho directly, not the project's internal/mqttc adapter (which only this
// module's own roles use, and which an outside program cannot import).
package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// topicRoot is where cohorts' application topics live (broker-config/acl).
const topicRoot = "ekem/v1/app"

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "publish" && os.Args[1] != "read") {
		fmt.Fprintln(os.Stderr, "usage: cohort-telemetry publish|read -api unix:PATH -broker URL -user ACCOUNT [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	apiAddr := fs.String("api", "", "the device agent's local key API: unix:PATH")
	broker := fs.String("broker", "", "MQTT broker URL: tcp://host:1883")
	user := fs.String("user", "", "MQTT account of this application (password in EKEM_PASSWORD)")
	n := fs.Int("n", 3, "publish: readings to send; read: envelopes to open before exiting (0: until interrupted)")
	every := fs.Duration("every", time.Second, "publish: time between readings")
	timeout := fs.Duration("timeout", 0, "read: give up after this long (0: never)")
	fs.Parse(os.Args[2:])
	if *apiAddr == "" || *broker == "" || *user == "" {
		fmt.Fprintln(os.Stderr, "cohort-telemetry: -api, -broker and -user are required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	api, err := newKeyAPI(*apiAddr)
	if err == nil {
		if os.Args[1] == "publish" {
			err = publish(ctx, api, *broker, *user, *n, *every)
		} else {
			err = read(ctx, api, *broker, *user, *n)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cohort-telemetry:", err)
		os.Exit(1)
	}
}

// keyAPI is a client of the agent's local key API.
type keyAPI struct{ hc *http.Client }

// apiError is the key API's error body.
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func (e *apiError) String() string { return e.Code + ": " + e.Error }

func newKeyAPI(addr string) (*keyAPI, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok || path == "" {
		return nil, fmt.Errorf("-api %q: want unix:PATH", addr)
	}
	return &keyAPI{hc: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}}}, nil
}

// call posts in (or GETs, for nil) and decodes the answer into out; a
// refusal is returned as *apiError inside the error.
func (k *keyAPI) call(path string, in, out any) error {
	method, body := http.MethodGet, io.Reader(nil)
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		method, body = http.MethodPost, bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://agent"+path, body)
	if err != nil {
		return err
	}
	resp, err := k.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e apiError
		if json.Unmarshal(raw, &e) != nil || e.Code == "" {
			return fmt.Errorf("key API %s: %s", path, resp.Status)
		}
		return &refusal{e}
	}
	return json.Unmarshal(raw, out)
}

type refusal struct{ apiError }

func (r *refusal) Error() string { return "key API refused: " + r.String() }

type status struct {
	DeviceID    string   `json:"device_id"`
	Epoch       uint64   `json:"epoch"`
	Cohort      string   `json:"cohort"`
	GroupEpochs []uint64 `json:"group_epochs"`
}

type groupReply struct {
	Envelope  []byte `json:"envelope"`
	Plaintext []byte `json:"plaintext"`
	Cohort    string `json:"cohort"`
	Epoch     uint64 `json:"epoch"`
	Sender    string `json:"sender"`
	Ctr       uint64 `json:"ctr"`
}

// member waits until the agent holds a group key and returns its status.
func member(ctx context.Context, api *keyAPI) (status, error) {
	for {
		var st status
		err := api.call("/v1/status", nil, &st)
		if err == nil && st.Cohort != "" {
			return st, nil
		}
		if err == nil {
			err = errors.New("the device is not a member of a cohort (no group key yet)")
		}
		select {
		case <-ctx.Done():
			return st, err
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func connect(ctx context.Context, broker, user string) (mqtt.Client, error) {
	o := mqtt.NewClientOptions().AddBroker(broker).SetClientID(user).SetUsername(user).
		SetPassword(os.Getenv("EKEM_PASSWORD")).SetCleanSession(true).SetAutoReconnect(true).
		SetConnectRetry(true).SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(o)
	tok := c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect %s as %s: %w", broker, user, err)
	}
	return c, nil
}

func wait(ctx context.Context, tok mqtt.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// publish seals n readings under the cohort's group key and publishes them.
func publish(ctx context.Context, api *keyAPI, broker, user string, n int, every time.Duration) error {
	st, err := member(ctx, api)
	if err != nil {
		return err
	}
	c, err := connect(ctx, broker, user)
	if err != nil {
		return err
	}
	defer c.Disconnect(250)
	topic := topicRoot + "/" + st.Cohort + "/" + user
	for i := 0; i < n; i++ {
		reading, _ := json.Marshal(map[string]any{"device": st.DeviceID, "seq": i, "celsius": 21.5 + float64(i)/10})
		var sealed groupReply
		if err := api.call("/v1/group/seal", map[string]any{"plaintext": reading}, &sealed); err != nil {
			return err
		}
		if err := wait(ctx, c.Publish(topic, 1, false, sealed.Envelope)); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		fmt.Printf("sent topic=%s epoch=%d ctr=%d\n", topic, sealed.Epoch, sealed.Ctr)
		if i+1 < n {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(every):
			}
		}
	}
	return nil
}

// read opens the cohort's envelopes until n are opened or ctx ends.
func read(ctx context.Context, api *keyAPI, broker, user string, n int) error {
	st, err := member(ctx, api)
	if err != nil {
		return err
	}
	msgs := make(chan mqtt.Message, 256)
	o := func(_ mqtt.Client, m mqtt.Message) {
		select { // never block paho's handler
		case msgs <- m:
		default:
			fmt.Fprintln(os.Stderr, "cohort-telemetry: inbox full, message dropped")
		}
	}
	c, err := connect(ctx, broker, user)
	if err != nil {
		return err
	}
	defer c.Disconnect(250)
	filter := topicRoot + "/" + st.Cohort + "/+"
	if err := wait(ctx, c.Subscribe(filter, 1, o)); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	fmt.Printf("subscribed %s\n", filter)
	opened := 0
	for n == 0 || opened < n {
		select {
		case <-ctx.Done():
			if n == 0 {
				return nil
			}
			return fmt.Errorf("opened %d of %d envelopes: %w", opened, n, ctx.Err())
		case m := <-msgs:
			var r groupReply
			err := api.call("/v1/group/open", map[string]any{"envelope": m.Payload()}, &r)
			var ref *refusal
			switch {
			case errors.As(err, &ref):
				fmt.Printf("refused topic=%s %s\n", m.Topic(), ref.Code)
			case err != nil:
				return err
			default:
				opened++
				fmt.Printf("opened sender=%s epoch=%d ctr=%d envelope=%s: %s\n", r.Sender, r.Epoch, r.Ctr, hex.EncodeToString(m.Payload()), r.Plaintext)
			}
		}
	}
	return nil
}
