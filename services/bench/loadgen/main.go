// Command loadgen is tongban's open-loop HTTP load generator: it offers POST requests at a
// fixed rate and records each answer, costing far less CPU per request than the service it
// measures, so that a bench measures tongban and not its load generator.
//
// Guarantees:
//   - Open loop: request i is due at t0 + i/rate and is sent at that time by a goroutine of its
//     own, whether or not earlier requests were answered. Its latency runs from its due time to
//     the full answer, so a stalled server or a busy client shows in the latency instead of
//     slowing the offered load (no coordinated omission).
//   - Every request carries its own Idempotency-Key (<run id>-<i>); request bodies and bearer
//     tokens are read from a file and cycled, so the load spreads over many terminals' tokens.
//   - A request due while max-inflight requests are unanswered is not sent and is counted late.
//   - Status 0 means no answer: a connection error or the timeout (2 min by default).
//
// Why a small Go program of our own and not oha or wrk: wrk is closed loop (each connection
// waits for its answer before the next request: coordinated omission), wrk2 is not packaged
// here, and oha cannot give each request its own header values. Go is installed on machines of
// this kind, and a module with only the standard library builds offline in seconds.
//
// Input: one request a line, `<token>\t<body json>`. Output: a TSV of answers (key, status,
// scheduled-send epoch ns, latency ns, id field of a 2xx answer), progress once a second on
// stderr, and a JSON summary on stdout including the generator's own CPU (getrusage).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxAnswerBytes bounds how much of an answer is read; the rest is discarded.
const maxAnswerBytes = 1 << 20

type request struct {
	auth string // "Bearer <token>"
	body []byte
}

type config struct {
	requestsFile string
	urls         []string
	rate         float64
	duration     time.Duration
	connections  int
	maxInflight  int
	idField      string
	out          string
	runID        string
	timeout      time.Duration
	quiet        bool
	procs        int
}

// answer is one request's outcome; each goroutine writes only its own slot.
type answer struct {
	sent      bool
	status    int
	dueUnixNs int64
	latencyNs int64
	id        string
}

type urlList []string

func (u *urlList) String() string     { return strings.Join(*u, ",") }
func (u *urlList) Set(v string) error { *u = append(*u, v); return nil }

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	var urls urlList
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.requestsFile, "requests", "", "`FILE` of requests, one a line: <token>TAB<body json> (cycled)")
	fs.Var(&urls, "url", "`URL` to POST to; repeat for several (round robin)")
	fs.Float64Var(&cfg.rate, "rate", 0, "requests per second, open loop")
	fs.DurationVar(&cfg.duration, "duration", 0, "how long to offer load (e.g. 10s); sends round(rate*duration) requests")
	fs.IntVar(&cfg.connections, "connections", 64, "keep-alive connections per URL")
	fs.IntVar(&cfg.maxInflight, "max-inflight", 4096, "a request due while this many are unanswered is not sent (counted late)")
	fs.StringVar(&cfg.idField, "id-field", "case_id", "top-level field of a 2xx JSON answer to record")
	fs.StringVar(&cfg.out, "out", "", "TSV of answers: key, status, scheduled-send epoch ns, latency ns, id")
	fs.StringVar(&cfg.runID, "run-id", "", "prefix of the Idempotency-Keys (<run id>-<i>); default: the start time")
	fs.DurationVar(&cfg.timeout, "timeout", 2*time.Minute, "per request; status 0 when it runs out")
	fs.BoolVar(&cfg.quiet, "quiet", false, "no progress lines on stderr")
	fs.IntVar(&cfg.procs, "procs", 1, "OS threads running Go code at once (GOMAXPROCS); one serves thousands of requests/s")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "loadgen: open-loop HTTP POST load with a JSON summary on stdout.\n\n"+
			"usage: loadgen -requests FILE -url URL [-url URL...] -rate R -duration D -out FILE [options]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	cfg.urls = urls
	switch {
	case cfg.requestsFile == "":
		return cfg, errors.New("-requests is required")
	case len(cfg.urls) == 0:
		return cfg, errors.New("-url is required")
	case !(cfg.rate > 0) || math.IsInf(cfg.rate, 0):
		return cfg, errors.New("-rate must be a positive number")
	case cfg.duration <= 0:
		return cfg, errors.New("-duration must be positive")
	case cfg.out == "":
		return cfg, errors.New("-out is required")
	case cfg.connections < 1 || cfg.maxInflight < 1 || cfg.procs < 1:
		return cfg, errors.New("-connections, -max-inflight and -procs must be at least 1")
	}
	if cfg.runID == "" {
		cfg.runID = strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	return cfg, nil
}

// readRequests parses `<token>\t<body>` lines; blank lines are skipped.
func readRequests(r io.Reader) ([]request, error) {
	var out []request
	scanner := bufio.NewScanner(r)
	scanner.Buffer(make([]byte, 64*1024), 16<<20)
	for line := 1; scanner.Scan(); line++ {
		text := scanner.Bytes()
		if len(bytes.TrimSpace(text)) == 0 {
			continue
		}
		token, body, ok := bytes.Cut(text, []byte{'\t'})
		if !ok || len(token) == 0 {
			return nil, fmt.Errorf("line %d: want <token>\\t<body json>", line)
		}
		out = append(out, request{
			auth: "Bearer " + string(token),
			body: append([]byte(nil), body...),
		})
	}
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no requests in the file")
	}
	return out, nil
}

// requestCount is round(rate * duration), at least one.
func requestCount(rate float64, duration time.Duration) int {
	return max(1, int(math.Round(rate*duration.Seconds())))
}

// dueOffset is when request i is due, after t0.
func dueOffset(i int, rate float64) time.Duration {
	return time.Duration(float64(i) * float64(time.Second) / rate)
}

// idOf reads `field` from the top level of a JSON object, stopping as soon as it is found;
// "" when the answer is not an object or the field is not a string.
func idOf(body []byte, field string) string {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return ""
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return ""
		}
		if key == field {
			if value, err := dec.Token(); err == nil {
				if s, ok := value.(string); ok {
					return s
				}
			}
			return ""
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return ""
		}
	}
	return ""
}

// printable keeps an id from breaking the TSV of answers.
func printable(r rune) rune {
	if r == '\t' || r == '\n' || r == '\r' {
		return -1
	}
	return r
}

// counters are read by the progress line while goroutines update them.
type counters struct {
	sent, answered, late, inflight atomic.Int64
	byStatus                       [600]atomic.Int64 // index 0: no answer
}

func (c *counters) statuses() map[string]int64 {
	out := map[string]int64{}
	for code := range c.byStatus {
		if n := c.byStatus[code].Load(); n > 0 {
			out[strconv.Itoa(code)] = n
		}
	}
	return out
}

func (c *counters) progress(elapsed time.Duration, total int) string {
	parts := []string{}
	for code := range c.byStatus {
		if n := c.byStatus[code].Load(); n > 0 {
			parts = append(parts, fmt.Sprintf("%d:%d", code, n))
		}
	}
	return fmt.Sprintf("loadgen %5.1fs sent %d/%d answered %d late %d inflight %d status %s",
		elapsed.Seconds(), c.sent.Load(), total, c.answered.Load(), c.late.Load(),
		c.inflight.Load(), strings.Join(parts, " "))
}

var bufferPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

type generator struct {
	cfg      config
	client   *http.Client
	requests []request
	answers  []answer
	counts   counters
}

func newClient(cfg config) *http.Client {
	transport := &http.Transport{
		Proxy:               nil, // the stack is local; a proxy from the environment would skew it
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxConnsPerHost:     cfg.connections,
		MaxIdleConnsPerHost: cfg.connections,
		MaxIdleConns:        cfg.connections * len(cfg.urls),
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	return &http.Client{Transport: transport, Timeout: cfg.timeout}
}

// send offers request i, due at `due`, and records its answer in slot i.
func (g *generator) send(i int, due time.Time) {
	defer g.counts.inflight.Add(-1)
	slot := &g.answers[i]
	slot.sent = true
	slot.dueUnixNs = due.UnixNano()
	req := g.requests[i%len(g.requests)]
	key := g.cfg.runID + "-" + strconv.Itoa(i)
	status, id := g.post(g.cfg.urls[i%len(g.cfg.urls)], req, key)
	slot.latencyNs = int64(time.Since(due))
	slot.status = status
	slot.id = strings.Map(printable, id)
	g.counts.byStatus[status].Add(1)
	g.counts.answered.Add(1)
}

func (g *generator) post(url string, req request, key string) (int, string) {
	httpReq, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(req.body))
	if err != nil {
		return 0, ""
	}
	httpReq.Header = http.Header{
		"Authorization":   {req.auth},
		"Content-Type":    {"application/json"},
		"Idempotency-Key": {key},
	}
	resp, err := g.client.Do(httpReq)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	buf := bufferPool.Get().(*bytes.Buffer)
	defer bufferPool.Put(buf)
	buf.Reset()
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, maxAnswerBytes)); err != nil {
		return 0, "" // the answer broke off: no answer
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	status := resp.StatusCode
	if status < 1 || status >= len(g.counts.byStatus) {
		status = 0
	}
	if status >= 200 && status < 300 {
		return status, idOf(buf.Bytes(), g.cfg.idField)
	}
	return status, ""
}

// run offers every request on schedule and waits for the answers.
func (g *generator) run() time.Duration {
	total := len(g.answers)
	var wg sync.WaitGroup
	t0 := time.Now()
	stop := make(chan struct{})
	if !g.cfg.quiet {
		go func() {
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					fmt.Fprintln(os.Stderr, g.counts.progress(time.Since(t0), total))
				}
			}
		}()
	}
	for i := 0; i < total; i++ {
		due := t0.Add(dueOffset(i, g.cfg.rate))
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		if g.counts.inflight.Load() >= int64(g.cfg.maxInflight) {
			g.counts.late.Add(1)
			continue
		}
		g.counts.inflight.Add(1)
		g.counts.sent.Add(1)
		wg.Add(1)
		go func(i int, due time.Time) {
			defer wg.Done()
			g.send(i, due)
		}(i, due)
	}
	wg.Wait()
	close(stop)
	wall := time.Since(t0)
	if !g.cfg.quiet {
		fmt.Fprintln(os.Stderr, g.counts.progress(wall, total))
	}
	return wall
}

func (g *generator) writeAnswers(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 256*1024)
	for i, a := range g.answers {
		if !a.sent {
			continue
		}
		line := fmt.Sprintf("%s-%d\t%d\t%d\t%d\t%s\n", g.cfg.runID, i, a.status, a.dueUnixNs, a.latencyNs, a.id)
		if _, err := w.WriteString(line); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type summary struct {
	RunID      string           `json:"run_id"`
	Rate       float64          `json:"rate"`
	Requests   int              `json:"requests"`
	Sent       int64            `json:"sent"`
	Answered   int64            `json:"answered"`
	Late       int64            `json:"late"`
	Statuses   map[string]int64 `json:"statuses"`
	WallS      float64          `json:"wall_s"`
	CPUUserS   float64          `json:"cpu_user_s"`
	CPUSysS    float64          `json:"cpu_sys_s"`
	CPUS       float64          `json:"cpu_s"`
	CPUMsPerRq float64          `json:"cpu_ms_per_request"`
	MaxRSSMB   float64          `json:"max_rss_mb"`
}

func seconds(tv syscall.Timeval) float64 {
	return float64(tv.Sec) + float64(tv.Usec)/1e6
}

func (g *generator) summary(wall time.Duration) summary {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	user, sys := seconds(usage.Utime), seconds(usage.Stime)
	s := summary{
		RunID:    g.cfg.runID,
		Rate:     g.cfg.rate,
		Requests: len(g.answers),
		Sent:     g.counts.sent.Load(),
		Answered: g.counts.answered.Load(),
		Late:     g.counts.late.Load(),
		Statuses: g.counts.statuses(),
		WallS:    wall.Seconds(),
		CPUUserS: user,
		CPUSysS:  sys,
		CPUS:     user + sys,
		MaxRSSMB: float64(usage.Maxrss) / 1024, // Linux reports KiB
	}
	if s.Sent > 0 {
		s.CPUMsPerRq = 1000 * s.CPUS / float64(s.Sent)
	}
	return s
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	// One P by default: every wake-up handed between threads costs tens of microseconds on a
	// small virtual machine, about a third of the generator's CPU per request with two.
	runtime.GOMAXPROCS(cfg.procs)
	f, err := os.Open(cfg.requestsFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	requests, err := readRequests(f)
	f.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %s: %v\n", cfg.requestsFile, err)
		os.Exit(2)
	}
	g := &generator{
		cfg:      cfg,
		client:   newClient(cfg),
		requests: requests,
		answers:  make([]answer, requestCount(cfg.rate, cfg.duration)),
	}
	wall := g.run()
	if err := g.writeAnswers(cfg.out); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen: writing answers:", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(g.summary(wall))
	fmt.Println(string(out))
}
