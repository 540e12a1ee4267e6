// Command leaky is the Go program the oomsnap integration tests OOM-kill.
//
// It serves net/http/pprof and leaks memory at a precise, wall-clock paced
// rate through main.(*leakyCache).put, so a heap profile names the leak.
// See README.md for the flags and the function names tests grep for.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"time"
)

const (
	mib      = 1 << 20
	pageSize = 4096
)

// leakyCache holds every leaked chunk so the garbage collector cannot free it.
type leakyCache struct {
	mu     sync.Mutex
	chunks [][]byte
	held   int64
}

// cache is the global that keeps the leak reachable.
var cache = &leakyCache{}

// warm holds the baseline allocation made by warmCache.
var warm [][]byte

// put allocates one chunk of n bytes, touches every page so it is resident,
// and keeps it. This is the function a heap profile must name.
//
//go:noinline
func (c *leakyCache) put(n int) {
	b := make([]byte, n)
	touch(b)
	c.mu.Lock()
	c.chunks = append(c.chunks, b)
	c.held += int64(n)
	c.mu.Unlock()
}

// shrink drops references until at most target bytes are held, then returns
// the memory to the OS so RSS really falls.
func (c *leakyCache) shrink(target int64) {
	c.mu.Lock()
	for len(c.chunks) > 0 && c.held > target {
		last := len(c.chunks) - 1
		c.held -= int64(len(c.chunks[last]))
		c.chunks[last] = nil
		c.chunks = c.chunks[:last]
	}
	c.mu.Unlock()
	debug.FreeOSMemory()
}

func (c *leakyCache) size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.held
}

// touch writes one byte in every 4 KiB page so the kernel backs it with RAM.
func touch(b []byte) {
	for i := 0; i < len(b); i += pageSize {
		b[i] = 1
	}
	if len(b) > 0 {
		b[len(b)-1] = 1
	}
}

// warmCache allocates and holds the baseline memory, through a function name
// distinct from the leak so a heap diff shows only the leak growing.
//
//go:noinline
func warmCache(total int64, chunk int) {
	for done := int64(0); done < total; {
		n := chunk
		if rest := total - done; rest < int64(n) {
			n = int(rest)
		}
		b := make([]byte, n)
		touch(b)
		warm = append(warm, b)
		done += int64(n)
	}
}

// parkedWorker is the bottom of each parked goroutine: it recurses a few
// frames through parkedDepth and then blocks forever on ch.
//
//go:noinline
func parkedWorker(ch chan struct{}, ready *sync.WaitGroup) {
	parkedDepth(4, ch, ready)
}

//go:noinline
func parkedDepth(n int, ch chan struct{}, ready *sync.WaitGroup) {
	if n > 0 {
		parkedDepth(n-1, ch, ready)
		return
	}
	ready.Done()
	<-ch
}

// spawnParked parks goroutines in main.parkedWorker until count exist, at
// rate per second (rate <= 0: as fast as possible): a goroutine leak.
func spawnParked(count int, rate float64) {
	ch := make(chan struct{})
	var ready sync.WaitGroup
	start := time.Now()
	for i := 0; i < count; i++ {
		if rate > 0 {
			due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		ready.Add(1)
		go parkedWorker(ch, &ready)
	}
	ready.Wait()
}

// fillPageCache writes size bytes to path at rate bytes/s (rate <= 0: as
// fast as possible), then reads the file again and again through a small
// buffer, so its pages stay in the page cache on the active list: memory
// the cgroup counts in its working set, with no Go heap behind it.
//
//go:noinline
func fillPageCache(path string, size int64, rate float64, chunk int) {
	f, err := os.Create(path)
	if err != nil {
		log.Fatalf("leaky: %v", err)
	}
	buf := make([]byte, chunk)
	for i := range buf {
		buf[i] = byte(i)
	}
	start := time.Now()
	for done := int64(0); done < size; done += int64(len(buf)) {
		if rate > 0 {
			due := start.Add(time.Duration(float64(done) / rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		if _, err := f.Write(buf); err != nil {
			log.Fatalf("leaky: %v", err)
		}
	}
	for {
		if _, err := f.Seek(0, 0); err != nil {
			log.Fatalf("leaky: %v", err)
		}
		for {
			if n, err := f.Read(buf); n == 0 || err != nil {
				break
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// grow leaks from the current size up to target bytes at rate bytes/s
// (rate <= 0: as fast as possible), against a wall-clock schedule: the
// amount due at time t is rate*(t-start); each step allocates one chunk and
// then sleeps until the next chunk is due.
func grow(target int64, rate float64, chunk int) {
	start := time.Now()
	base := cache.size()
	for {
		held := cache.size()
		if target > 0 && held >= target {
			return
		}
		n := chunk
		if target > 0 && target-held < int64(n) {
			n = int(target - held)
		}
		if rate > 0 {
			// Time at which the leak is due to reach held+n.
			due := start.Add(time.Duration(float64(held+int64(n)-base) / rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
		}
		cache.put(n)
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:6060", "listen address for net/http/pprof")
	rate := flag.Float64("rate", 0, "leak rate in MiB/s (0 = as fast as one goroutine can)")
	chunkKiB := flag.Int("chunk", 1024, "size of each leaked allocation in KiB")
	delay := flag.Duration("delay", 0, "wait this long before leaking")
	maxMiB := flag.Float64("max", 0, "stop leaking when this many MiB are held (0 = never)")
	mode := flag.String("mode", "leak", "leak | oscillate | goroutines | pagecache")
	file := flag.String("file", "", "pagecache: the file to write and keep reading")
	count := flag.Int("count", 0, "goroutines: how many to park at -rate per second")
	low := flag.Float64("low", 0, "oscillate: drop back to this many MiB")
	high := flag.Float64("high", 0, "oscillate: grow up to this many MiB")
	goroutines := flag.Int("goroutines", 0, "extra goroutines parked forever in main.parkedWorker")
	baseline := flag.Float64("baseline", 0, "MiB allocated and held at start by main.warmCache")
	flag.Parse()

	if *chunkKiB <= 0 {
		log.Fatalf("leaky: -chunk must be > 0")
	}
	chunk := *chunkKiB << 10
	bytesPerSec := *rate * mib
	switch *mode {
	case "leak", "oscillate":
	case "goroutines":
		if *count <= 0 {
			log.Fatalf("leaky: -mode goroutines needs -count > 0")
		}
	case "pagecache":
		if *file == "" || *maxMiB <= 0 {
			log.Fatalf("leaky: -mode pagecache needs -file and -max")
		}
	default:
		log.Fatalf("leaky: unknown -mode %q (leak | oscillate | goroutines | pagecache)", *mode)
	}
	if *mode == "oscillate" && !(*high > *low && *low >= 0) {
		log.Fatalf("leaky: -mode oscillate needs -high > -low >= 0")
	}

	if *baseline > 0 {
		warmCache(int64(*baseline*mib), chunk)
	}
	if *goroutines > 0 {
		ch := make(chan struct{})
		var ready sync.WaitGroup
		ready.Add(*goroutines)
		for i := 0; i < *goroutines; i++ {
			go parkedWorker(ch, &ready)
		}
		ready.Wait()
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("leaky: listen %s: %v", *addr, err)
	}
	go func() {
		if err := http.Serve(ln, nil); err != nil {
			log.Fatalf("leaky: serve: %v", err)
		}
	}()
	fmt.Printf("leaky: listening on %s pid %d\n", ln.Addr(), os.Getpid())
	_ = os.Stdout.Sync()

	if *delay > 0 {
		time.Sleep(*delay)
	}
	switch *mode {
	case "leak":
		grow(int64(*maxMiB*mib), bytesPerSec, chunk)
	case "goroutines":
		spawnParked(*count, *rate)
	case "pagecache":
		fillPageCache(*file, int64(*maxMiB*mib), bytesPerSec, chunk)
	case "oscillate":
		lowB, highB := int64(*low*mib), int64(*high*mib)
		for {
			grow(highB, bytesPerSec, chunk)
			cache.shrink(lowB)
			runtime.Gosched()
		}
	}
	// Holding: run one GC so the heap profile (which reflects the last
	// completed GC) shows everything that was leaked.
	runtime.GC()
	select {} // hold what was leaked until killed
}
