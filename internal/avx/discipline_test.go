package avx_test

import (
	"go/ast"
	"go/token"
	"go/types"
	"slices"
	"strings"
	"testing"

	"golang.org/x/tools/go/packages"
)

const circl = "github.com/cloudflare/circl"

// wrappers are the only packages whose non-test code may import circl:
// every circl call they make is followed by Clean (see TestCleanAfterCircl).
var wrappers = []string{
	"github.com/entropykem/entropykem/pkg/kem",
	"github.com/entropykem/entropykem/pkg/signature",
}

// TestOnlyWrappersImportCircl: no other package of the module imports
// circl outside its tests (which measure or cross-check circl itself), so
// no circl call escapes the Clean discipline.
func TestOnlyWrappersImportCircl(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the whole module")
	}
	pkgs, err := packages.Load(&packages.Config{Mode: packages.NeedName | packages.NeedImports, Dir: "../.."}, "./...")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, p := range pkgs {
		seen++
		for path := range p.Imports {
			if strings.HasPrefix(path, circl) && !slices.Contains(wrappers, p.PkgPath) {
				t.Errorf("%s imports %s: call it through pkg/kem or pkg/signature, which clean up after it (internal/avx)", p.PkgPath, path)
			}
		}
	}
	if seen < 20 {
		t.Fatalf("loaded %d packages: the module was not found", seen)
	}
}

// TestCleanAfterCircl: in the wrappers, every function that calls into
// circl also calls Clean, deferred or after its last circl call.
func TestCleanAfterCircl(t *testing.T) {
	pkgs, err := packages.Load(&packages.Config{
		Mode: packages.NeedName | packages.NeedSyntax | packages.NeedTypes | packages.NeedTypesInfo,
	}, wrappers...)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	for _, p := range pkgs {
		if len(p.Errors) > 0 {
			t.Fatalf("%s: %v", p.PkgPath, p.Errors)
		}
		for _, f := range p.Syntax {
			for _, d := range f.Decls {
				fn, ok := d.(*ast.FuncDecl)
				if !ok || fn.Body == nil {
					continue
				}
				last, deferred, cleanAfter := token.NoPos, false, token.NoPos
				ast.Inspect(fn.Body, func(n ast.Node) bool {
					switch n := n.(type) {
					case *ast.DeferStmt:
						if isClean(p.TypesInfo, n.Call) {
							deferred = true
						}
					case *ast.CallExpr:
						if isClean(p.TypesInfo, n) {
							cleanAfter = n.Pos()
						} else if callsCircl(p.TypesInfo, n) {
							calls++
							last = n.Pos()
						}
					}
					return true
				})
				if last.IsValid() && !deferred && cleanAfter < last {
					t.Errorf("%s: %s calls circl without avx.Clean after it (or deferred)", p.Fset.Position(last), fn.Name.Name)
				}
			}
		}
	}
	if calls < 10 {
		t.Fatalf("found %d circl calls: the check does not see them", calls)
	}
}

// callsCircl reports whether call's callee (a function, or a method of a
// circl type or interface) is circl's.
func callsCircl(info *types.Info, call *ast.CallExpr) bool {
	var obj types.Object
	switch fun := ast.Unparen(call.Fun).(type) {
	case *ast.Ident:
		obj = info.Uses[fun]
	case *ast.SelectorExpr:
		if sel, ok := info.Selections[fun]; ok {
			obj = sel.Obj()
			// A method called on a circl type, or through a circl
			// interface (whose method may be declared elsewhere, as
			// MarshalBinary by encoding), runs circl's code.
			if fromCircl(sel.Recv()) && !strings.HasSuffix(fun.Sel.Name, "Size") {
				return true
			}
		} else {
			obj = info.Uses[fun.Sel]
		}
	}
	f, ok := obj.(*types.Func)
	// A size getter (PublicKeySize, ...) returns a constant.
	return ok && f.Pkg() != nil && strings.HasPrefix(f.Pkg().Path(), circl) && !strings.HasSuffix(f.Name(), "Size")
}

// fromCircl reports whether t (or what it points to) is a type circl
// declares.
func fromCircl(t types.Type) bool {
	if p, ok := t.(*types.Pointer); ok {
		t = p.Elem()
	}
	n, ok := t.(*types.Named)
	return ok && n.Obj().Pkg() != nil && strings.HasPrefix(n.Obj().Pkg().Path(), circl)
}

func isClean(info *types.Info, call *ast.CallExpr) bool {
	sel, ok := ast.Unparen(call.Fun).(*ast.SelectorExpr)
	if !ok {
		return false
	}
	f, ok := info.Uses[sel.Sel].(*types.Func)
	return ok && f.Name() == "Clean" && f.Pkg() != nil && f.Pkg().Path() == "github.com/entropykem/entropykem/internal/avx"
}
