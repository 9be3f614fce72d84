;; sleep.wat: a guest that waits 200 ms, then echoes.
;;
;; What it does: reads the whole dispatch from stdin, sleeps 200 ms with
;; poll_oneoff on one relative subscription to the monotonic clock, then
;; answers like echo.wat with one stdout line
;;
;;     {"type":"final","text":"slept: PROMPT"}
;;
;; PROMPT copied verbatim in its still-JSON-escaped form, so the line stays
;; valid JSON. It returns from _start (exit code 0).
;;
;; What it is for: holding many guests alive at once (concurrency, the
;; scheduler, per-dispatch isolation), and checking that a guest blocked in a
;; host call does not block the others.
;;
;; Failures: stdin over 1 MiB, a read error, a dispatch without "prompt", or
;; poll_oneoff failing: a line on stderr and proc_exit(2).
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param $fd i32) (param $iovs i32) (param $iovs_len i32) (param $nread i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param $fd i32) (param $iovs i32) (param $iovs_len i32) (param $nwritten i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param $in i32) (param $out i32) (param $nsubscriptions i32) (param $nevents i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param $code i32)))

  ;; 35 pages = 2240 KiB: room for the 1 MiB input and the up-to-1 MiB output.
  (memory (export "memory") 35)

  ;; ---- memory layout ---------------------------------------------------
  (global $IOV i32 (i32.const 0))          ;; one iovec {buf, len}
  (global $NUM i32 (i32.const 8))          ;; nread / nwritten / nevents out-parameter
  (global $SUB i32 (i32.const 512))        ;; one subscription (48 bytes)
  (global $EVENT i32 (i32.const 576))      ;; one event (32 bytes)
  (global $IN i32 (i32.const 0x10000))     ;; stdin buffer (IN_CAP + 1 bytes)
  (global $IN_CAP i32 (i32.const 0x100000));; 1 MiB: more input is an error
  (global $OUT i32 (i32.const 0x120000))   ;; the assembled output line

  (global $SLEEP_NS i64 (i64.const 200000000)) ;; 200 ms

  ;; ---- constant strings (address, length) ------------------------------
  (global $S_PROMPT_KEY i32 (i32.const 64))
  (global $S_PROMPT_KEY_LEN i32 (i32.const 10))
  (data (i32.const 64) "\"prompt\":\"")
  (global $S_HEAD i32 (i32.const 96))
  (global $S_HEAD_LEN i32 (i32.const 31))
  (data (i32.const 96) "{\"type\":\"final\",\"text\":\"slept: ")
  (global $S_TAIL i32 (i32.const 136))
  (global $S_TAIL_LEN i32 (i32.const 3))
  (data (i32.const 136) "\"}\n")
  (global $S_ERR_READ i32 (i32.const 160))
  (global $S_ERR_READ_LEN i32 (i32.const 29))
  (data (i32.const 160) "sleep: cannot read the stdin\n")
  (global $S_ERR_BIG i32 (i32.const 192))
  (global $S_ERR_BIG_LEN i32 (i32.const 41))
  (data (i32.const 192) "sleep: the dispatch is larger than 1 MiB\n")
  (global $S_ERR_FIELD i32 (i32.const 240))
  (global $S_ERR_FIELD_LEN i32 (i32.const 43))
  (data (i32.const 240) "sleep: the dispatch has no \"prompt\" string\n")
  (global $S_ERR_POLL i32 (i32.const 288))
  (global $S_ERR_POLL_LEN i32 (i32.const 26))
  (data (i32.const 288) "sleep: poll_oneoff failed\n")

  ;; Write a message to stderr and exit with `code`.
  (func $die (param $msg i32) (param $len i32) (param $code i32)
    (drop (call $write_all (i32.const 2) (local.get $msg) (local.get $len)))
    (call $proc_exit (local.get $code)))

  ;; Write all `len` bytes at `ptr` to `fd`; returns 0 or the WASI errno
  ;; (29, EIO, when the host accepts nothing).
  (func $write_all (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (local $err i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (global.get $IOV) (local.get $ptr))
        (i32.store offset=4 (global.get $IOV) (local.get $len))
        (local.set $err
          (call $fd_write (local.get $fd) (global.get $IOV) (i32.const 1) (global.get $NUM)))
        (if (local.get $err) (then (return (local.get $err))))
        (if (i32.eqz (i32.load (global.get $NUM))) (then (return (i32.const 29))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (global.get $NUM))))
        (local.set $len (i32.sub (local.get $len) (i32.load (global.get $NUM))))
        (br $more)))
    (i32.const 0))

  ;; Read stdin until EOF into $IN; returns the number of bytes read.
  ;; The iovec offers one byte more than IN_CAP so that overflow is noticed.
  (func $read_stdin (result i32)
    (local $len i32)
    (block $eof
      (loop $more
        (i32.store (global.get $IOV) (i32.add (global.get $IN) (local.get $len)))
        (i32.store offset=4 (global.get $IOV)
          (i32.sub (i32.add (global.get $IN_CAP) (i32.const 1)) (local.get $len)))
        (if (call $fd_read (i32.const 0) (global.get $IOV) (i32.const 1) (global.get $NUM))
          (then (call $die (global.get $S_ERR_READ) (global.get $S_ERR_READ_LEN) (i32.const 2))))
        (br_if $eof (i32.eqz (i32.load (global.get $NUM))))
        (local.set $len (i32.add (local.get $len) (i32.load (global.get $NUM))))
        ;; past the cap: stop before offering an empty iovec
        (br_if $eof (i32.gt_u (local.get $len) (global.get $IN_CAP)))
        (br $more)))
    (if (i32.gt_u (local.get $len) (global.get $IN_CAP))
      (then (call $die (global.get $S_ERR_BIG) (global.get $S_ERR_BIG_LEN) (i32.const 2))))
    (local.get $len))

  ;; Find the first occurrence of needle[0..nlen] in hay[0..hlen]; returns the
  ;; address just past it, or 0 when it does not occur.
  (func $find_after (param $needle i32) (param $nlen i32) (param $hay i32) (param $hlen i32) (result i32)
    (local $at i32) (local $last i32) (local $j i32)
    (if (i32.lt_u (local.get $hlen) (local.get $nlen)) (then (return (i32.const 0))))
    (local.set $at (local.get $hay))
    (local.set $last (i32.add (local.get $hay) (i32.sub (local.get $hlen) (local.get $nlen))))
    (block $absent
      (loop $scan
        (br_if $absent (i32.gt_u (local.get $at) (local.get $last)))
        (local.set $j (i32.const 0))
        (block $mismatch
          (loop $compare
            (br_if $mismatch
              (i32.ne (i32.load8_u (i32.add (local.get $at) (local.get $j)))
                      (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (if (i32.eq (local.get $j) (local.get $nlen))
              (then (return (i32.add (local.get $at) (local.get $nlen)))))
            (br $compare)))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br $scan)))
    (i32.const 0))

  ;; Given the address just past a JSON string's opening quote, return the
  ;; address of its closing quote (the next `"` not escaped by a backslash),
  ;; or 0 when the string does not end before `end`.
  (func $string_end (param $p i32) (param $end i32) (result i32)
    (local $c i32)
    (block $unterminated
      (loop $scan
        (br_if $unterminated (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        (if (i32.eq (local.get $c) (i32.const 34)) ;; '"'
          (then (return (local.get $p))))
        ;; a backslash escapes the byte after it, whatever it is
        (local.set $p (i32.add (local.get $p)
          (select (i32.const 2) (i32.const 1) (i32.eq (local.get $c) (i32.const 92)))))
        (br $scan)))
    (i32.const 0))

  ;; Copy len bytes from src to dst; returns dst + len.
  (func $put (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  ;; Block for `ns` nanoseconds: poll_oneoff with one subscription to the
  ;; monotonic clock, relative timeout (flags 0).
  ;;   subscription: userdata u64 @0, tag u8 @8 (0 = clock),
  ;;                 clock id u32 @16 (1 = monotonic), timeout u64 @24,
  ;;                 precision u64 @32, flags u16 @40          (48 bytes)
  (func $sleep (param $ns i64)
    (memory.fill (global.get $SUB) (i32.const 0) (i32.const 48))
    (i64.store (global.get $SUB) (i64.const 0x5eeb))             ;; userdata
    (i32.store8 offset=8 (global.get $SUB) (i32.const 0))        ;; eventtype clock
    (i32.store offset=16 (global.get $SUB) (i32.const 1))        ;; monotonic
    (i64.store offset=24 (global.get $SUB) (local.get $ns))      ;; timeout
    (i64.store offset=32 (global.get $SUB) (i64.const 0))        ;; precision
    (i32.store16 offset=40 (global.get $SUB) (i32.const 0))      ;; relative
    (if (call $poll_oneoff (global.get $SUB) (global.get $EVENT) (i32.const 1) (global.get $NUM))
      (then (call $die (global.get $S_ERR_POLL) (global.get $S_ERR_POLL_LEN) (i32.const 2))))
    ;; the event's error field (u16 @8) must be 0 too
    (if (i32.load16_u offset=8 (global.get $EVENT))
      (then (call $die (global.get $S_ERR_POLL) (global.get $S_ERR_POLL_LEN) (i32.const 2)))))

  (func $main (export "_start")
    (local $in_len i32) (local $in_end i32)
    (local $prompt i32) (local $prompt_end i32)
    (local $out i32)

    (local.set $in_len (call $read_stdin))
    (local.set $in_end (i32.add (global.get $IN) (local.get $in_len)))

    (local.set $prompt (call $find_after (global.get $S_PROMPT_KEY) (global.get $S_PROMPT_KEY_LEN)
                                         (global.get $IN) (local.get $in_len)))
    (if (i32.eqz (local.get $prompt))
      (then (call $die (global.get $S_ERR_FIELD) (global.get $S_ERR_FIELD_LEN) (i32.const 2))))
    (local.set $prompt_end (call $string_end (local.get $prompt) (local.get $in_end)))
    (if (i32.eqz (local.get $prompt_end))
      (then (call $die (global.get $S_ERR_FIELD) (global.get $S_ERR_FIELD_LEN) (i32.const 2))))

    (call $sleep (global.get $SLEEP_NS))

    ;; {"type":"final","text":"slept: PROMPT"}\n
    (local.set $out (global.get $OUT))
    (local.set $out (call $put (local.get $out) (global.get $S_HEAD) (global.get $S_HEAD_LEN)))
    (local.set $out (call $put (local.get $out) (local.get $prompt)
                                (i32.sub (local.get $prompt_end) (local.get $prompt))))
    (local.set $out (call $put (local.get $out) (global.get $S_TAIL) (global.get $S_TAIL_LEN)))

    (if (call $write_all (i32.const 1) (global.get $OUT) (i32.sub (local.get $out) (global.get $OUT)))
      (then (call $proc_exit (i32.const 1)))))
)
