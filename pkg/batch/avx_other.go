//go:build !amd64

package batch

// cleanAVX is needed only on amd64 (see avx_amd64.go).
func cleanAVX() {}
