//go:build !amd64

package avx

// Clean is needed only on amd64 (see avx_amd64.go).
func Clean() {}
