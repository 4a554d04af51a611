// Package avx works around a CPU state problem of circl's assembly.
package avx

import "golang.org/x/sys/cpu"

// vzeroupper executes VZEROUPPER (a no-op on CPUs without AVX).
//
//go:noescape
func vzeroupper()

// hasAVX says whether VZEROUPPER exists on this CPU.
var hasAVX = cpu.X86.HasAVX

// Clean clears the upper halves of the YMM/ZMM registers. circl's AVX2
// assembly (ML-KEM's NTT and friends in v1.6.5) returns without
// VZEROUPPER, and while the upper state is dirty every legacy-SSE
// instruction pays a transition penalty: Go's SHA-NI SHA-256, which hashes
// every leaf, body, HKDF and HMAC right after an encapsulation, measured
// ~80 times slower on this project's AMD EPYC VMs (100 µs instead of 1.2 µs
// for a 1.7 KB leaf). Call it after every circl call on the same goroutine
// that goes on to hash.
//
// This is enforced, not remembered: discipline_test.go fails when a
// package other than pkg/kem and pkg/signature imports circl, or when a
// function of those two calls circl (a function, or a method of a circl
// type or interface) without calling Clean after its last such call or
// deferring it.
func Clean() {
	if hasAVX {
		vzeroupper()
	}
}
