package controllers

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

// TestStoreLocksAreReleased: the per-ManagedToken store lock excludes
// concurrent holders of one key, lets other keys run, and is removed once
// nobody holds or waits for it.
func TestStoreLocksAreReleased(t *testing.T) {
	m := newMemory()
	const keys, perKey = 20, 8
	var inside [keys]atomic.Int32
	var maxInside atomic.Int32
	var wg sync.WaitGroup
	for k := 0; k < keys; k++ {
		key := types.NamespacedName{Namespace: "ns", Name: fmt.Sprintf("mt-%d", k)}
		for i := 0; i < perKey; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				unlock := m.lockStore(key)
				n := inside[k].Add(1)
				for {
					cur := maxInside.Load()
					if n <= cur || maxInside.CompareAndSwap(cur, n) {
						break
					}
				}
				inside[k].Add(-1)
				unlock()
			}()
		}
	}
	wg.Wait()
	if got := maxInside.Load(); got != 1 {
		t.Fatalf("%d holders of one key's store lock at once, want 1", got)
	}
	m.mu.Lock()
	left := len(m.storing)
	m.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d store locks left after every holder unlocked, want 0", left)
	}
}
