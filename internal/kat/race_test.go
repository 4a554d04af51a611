//go:build race

package kat

// raceEnabled reports whether the test binary was built with -race.
const raceEnabled = true
