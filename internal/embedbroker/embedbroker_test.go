package embedbroker

import "testing"

func TestAllowed(t *testing.T) {
	const p = "ekem/v1"
	cases := []struct {
		user, topic string
		write, want bool
	}{
		{IssuerUser, p + "/reg/+", false, true},
		{IssuerUser, p + "/status/+", false, true},
		{IssuerUser, p + "/status/dev-1", false, true},
		{IssuerUser, p + "/#", false, false},
		{IssuerUser, p + "/root/+", false, true},
		{IssuerUser, p + "/epoch", false, true},
		{IssuerUser, p + "/ticket/dev-1", false, false},
		{IssuerUser, p + "/ticket/dev-1", true, true},
		{IssuerUser, p + "/root/4", true, true},
		{IssuerUser, p + "/epoch", true, true},
		{IssuerUser, p + "/issuer/online", true, true},
		{IssuerUser, p + "/issuer/key/0011223344556677", true, true},
		{"dev-1", p + "/issuer/key/+", false, true},
		{"dev-1", p + "/issuer/key/0011223344556677", true, false},
		{MonitorUser, p + "/issuer/key/+", false, true},
		{IssuerUser, p + "/reg/dev-1", true, false},
		{IssuerUser, p + "/ticket/+", false, false},
		{"dev-1", p + "/reg/dev-1", true, true},
		{"dev-1", p + "/status/dev-1", true, true},
		{"dev-1", p + "/reg/dev-2", true, false},
		{"dev-1", p + "/status/dev-2", true, false},
		{"dev-1", p + "/ticket/dev-1", true, false},
		{"dev-1", p + "/root/3", true, false},
		{"dev-1", p + "/ticket/dev-1", false, true},
		{"dev-1", p + "/ticket/dev-2", false, false},
		{"dev-1", p + "/ticket/+", false, false},
		{"dev-1", p + "/#", false, false},
		{"dev-1", "#", false, false},
		{"dev-1", p + "/root/+", false, true},
		{"dev-1", p + "/root/#", false, false},
		{"dev-1", p + "/epoch", false, true},
		{"dev-1", p + "/status/dev-1", false, false},
		{MonitorUser, p + "/#", false, true},
		{MonitorUser, "$SYS/#", false, true},
		{MonitorUser, p + "/status/dev-1", true, false},
		{MonitorUser, p + "/reg/" + MonitorUser, true, false},
		{MonitorUser, "other/#", false, false},
	}
	for _, c := range cases {
		if got := Allowed(p, c.user, c.topic, c.write); got != c.want {
			t.Errorf("Allowed(%s, %s, write=%v) = %v, want %v", c.user, c.topic, c.write, got, c.want)
		}
	}
}
