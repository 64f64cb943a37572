// SlowStart: an HTTP service that, like many JVM applications, spends seconds
// initialising before it accepts connections. Used by `bench startup` (tests/) to
// compare a cold start with a start restored from a ready-point checkpoint.
//
//   java [JVM flags] -cp DIR SlowStart [--docs N] [--queries N] [--port P]
//
// Initialisation is deterministic and CPU-bound: it generates a synthetic
// corpus of N documents from a fixed seed, builds an inverted index over it
// (terms -> delta- and varint-compressed posting lists), then warms up by
// running Q conjunctive queries against the index (which also gets the JIT to
// compile the hot paths, as a real warm-up does). Only then does it listen.
//
// GET / answers 200 with a body that proves the initialised state: the
// index's size and the SHA-256 of all its terms and postings, the checksum of
// the warm-up's results, and how many requests this process has answered
// (so two clones restored from one checkpoint can be told apart from one
// server answering twice). Timing goes to stdout only, so the body of the
// first answer is the same for every start, cold or restored.

import com.sun.net.httpserver.HttpServer;

import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;

public final class SlowStart {
    private static final String[] SYLLABLES = {
        "ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "ga", "vu", "xe", "zo", "bi", "fa", "hu",
        "ja", "ko", "ly", "me", "no", "pa", "qi", "ro", "sa", "te", "ul", "ve", "wo", "ya", "zi", "an",
    };

    public static void main(String[] args) throws Exception {
        int docs = intArg(args, "--docs", 200_000);
        int queries = intArg(args, "--queries", 300_000);
        int port = intArg(args, "--port", 8080);
        long t0 = System.nanoTime();
        System.out.println("slowstart: initialising (docs=" + docs + ", queries=" + queries + ")");

        String[] vocabulary = vocabulary(60_000);
        Index index = Index.build(vocabulary, docs, 0x5EED_2026L);
        long tIndex = System.nanoTime();
        String digest = index.digest();
        long warm = warmUp(index, vocabulary, queries, 0xC0FFEEL);
        long tWarm = System.nanoTime();
        // Leave only the live data on the heap: a smaller checkpoint.
        System.gc();

        String body = "ok docs=" + docs + " terms=" + index.terms() + " postings=" + index.postings()
            + " index_sha256=" + digest + " warmup=" + Long.toHexString(warm) + "\n";
        AtomicLong answered = new AtomicLong();
        HttpServer server = HttpServer.create(new InetSocketAddress(port), 64);
        server.createContext("/", exchange -> {
            byte[] out = (body + "requests=" + answered.incrementAndGet() + "\n").getBytes(StandardCharsets.UTF_8);
            exchange.getResponseHeaders().set("Content-Type", "text/plain");
            exchange.sendResponseHeaders(200, out.length);
            try (OutputStream os = exchange.getResponseBody()) {
                os.write(out);
            }
        });
        server.start();
        long tListen = System.nanoTime();
        System.out.printf("slowstart: listening on %d after %d ms (index %d ms, digest+warm-up %d ms)%n", port,
            (tListen - t0) / 1_000_000, (tIndex - t0) / 1_000_000, (tWarm - tIndex) / 1_000_000);
        System.out.print(body);
        System.out.flush();
    }

    private static int intArg(String[] args, String name, int dflt) {
        for (int i = 0; i + 1 < args.length; i++) {
            if (args[i].equals(name)) {
                return Integer.parseInt(args[i + 1]);
            }
        }
        return dflt;
    }

    /** n distinct pseudo-words made of 2-4 syllables. */
    static String[] vocabulary(int n) {
        String[] words = new String[n];
        int s = SYLLABLES.length;
        for (int i = 0; i < n; i++) {
            StringBuilder w = new StringBuilder();
            int x = i;
            do {
                w.append(SYLLABLES[x % s]);
                x /= s;
            } while (x > 0);
            w.append(SYLLABLES[(i * 7 + 3) % s]); // at least two syllables
            words[i] = w.append(i % 10).toString();
        }
        return words;
    }

    /** A word index with a Zipf-like skew: small indices are far more frequent. */
    static int zipf(Rng rng, int n) {
        double u = rng.nextDouble();
        return (int) Math.min(n - 1, Math.floor(Math.pow(n, u * u)) - 1 + rng.nextInt(2));
    }

    /**
     * Runs conjunctive two-term queries (terms drawn uniformly, so mostly
     * rare ones with short posting lists) and returns a checksum of the hit
     * counts.
     */
    static long warmUp(Index index, String[] vocabulary, int queries, long seed) {
        Rng rng = new Rng(seed);
        long sum = 0;
        for (int q = 0; q < queries; q++) {
            String a = vocabulary[rng.nextInt(vocabulary.length)];
            String b = vocabulary[rng.nextInt(vocabulary.length)];
            sum = sum * 31 + index.countBoth(a, b);
        }
        return sum;
    }

    /** SplitMix64: a small deterministic generator, the same on every JVM. */
    static final class Rng {
        private long state;

        Rng(long seed) {
            state = seed;
        }

        long next() {
            long z = (state += 0x9E3779B97F4A7C15L);
            z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
            z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
            return z ^ (z >>> 31);
        }

        int nextInt(int bound) {
            return (int) Long.remainderUnsigned(next(), bound);
        }

        double nextDouble() {
            return (next() >>> 11) * 0x1.0p-53;
        }
    }

    /** Term -> compressed, sorted list of the documents that contain it. */
    static final class Index {
        private final Map<String, byte[]> postings = new HashMap<>();
        private final Map<String, Integer> counts = new HashMap<>();
        private long total;

        static Index build(String[] vocabulary, int docs, long seed) {
            Rng rng = new Rng(seed);
            Map<String, Postings> building = new HashMap<>();
            for (int doc = 0; doc < docs; doc++) {
                int len = 20 + rng.nextInt(40);
                for (int k = 0; k < len; k++) {
                    String term = vocabulary[zipf(rng, vocabulary.length)];
                    building.computeIfAbsent(term, t -> new Postings()).add(doc);
                }
            }
            Index index = new Index();
            building.forEach((term, p) -> {
                index.postings.put(term, p.compress());
                index.counts.put(term, p.size);
                index.total += p.size;
            });
            return index;
        }

        int terms() {
            return postings.size();
        }

        long postings() {
            return total;
        }

        String digest() throws NoSuchAlgorithmException {
            MessageDigest sha = MessageDigest.getInstance("SHA-256");
            List<String> sorted = new ArrayList<>(postings.keySet());
            sorted.sort(null);
            for (String term : sorted) {
                sha.update(term.getBytes(StandardCharsets.UTF_8));
                sha.update((byte) 0);
                sha.update(postings.get(term));
            }
            return HexFormat.of().formatHex(sha.digest());
        }

        int[] docs(String term) {
            byte[] packed = postings.get(term);
            if (packed == null) {
                return new int[0];
            }
            int[] out = new int[counts.get(term)];
            int pos = 0;
            int prev = 0;
            for (int i = 0; i < out.length; i++) {
                int v = 0;
                int shift = 0;
                int b;
                do {
                    b = packed[pos++];
                    v |= (b & 0x7F) << shift;
                    shift += 7;
                } while ((b & 0x80) != 0);
                prev += v;
                out[i] = prev;
            }
            return out;
        }

        int countBoth(String a, String b) {
            int[] x = docs(a);
            int[] y = docs(b);
            int i = 0;
            int j = 0;
            int n = 0;
            while (i < x.length && j < y.length) {
                if (x[i] == y[j]) {
                    n++;
                    i++;
                    j++;
                } else if (x[i] < y[j]) {
                    i++;
                } else {
                    j++;
                }
            }
            return n;
        }
    }

    /** A growable sorted list of document numbers, deduplicated. */
    static final class Postings {
        int[] docs = new int[4];
        int size;

        void add(int doc) {
            if (size > 0 && docs[size - 1] == doc) {
                return;
            }
            if (size == docs.length) {
                docs = Arrays.copyOf(docs, size * 2);
            }
            docs[size++] = doc;
        }

        /** Deltas, varint-encoded: what a search engine keeps in memory. */
        byte[] compress() {
            byte[] out = new byte[size * 5];
            int pos = 0;
            int prev = 0;
            for (int i = 0; i < size; i++) {
                int v = docs[i] - prev;
                prev = docs[i];
                while ((v & ~0x7F) != 0) {
                    out[pos++] = (byte) ((v & 0x7F) | 0x80);
                    v >>>= 7;
                }
                out[pos++] = (byte) v;
            }
            return Arrays.copyOf(out, pos);
        }
    }
}
