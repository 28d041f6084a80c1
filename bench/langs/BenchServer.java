// make bench, part "langs": an HTTP server answering one request per connection, then closing.
// Writes its port to the file named by args[0].
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

public class BenchServer {
    public static void main(String[] args) throws Exception {
        byte[] response = ("HTTP/1.1 200 OK\r\nContent-Length: 512\r\nConnection: close\r\n\r\n" + "x".repeat(512))
                .getBytes(StandardCharsets.ISO_8859_1);
        ServerSocket srv = new ServerSocket(0, 128, InetAddress.getByName("127.0.0.1"));
        Path tmp = Path.of(args[0] + ".tmp");
        Files.writeString(tmp, Integer.toString(srv.getLocalPort()));
        Files.move(tmp, Path.of(args[0]), StandardCopyOption.ATOMIC_MOVE);
        while (true) {
            try (Socket s = srv.accept()) {
                BufferedReader in = new BufferedReader(new InputStreamReader(s.getInputStream(), StandardCharsets.ISO_8859_1));
                String line;
                while ((line = in.readLine()) != null && !line.isEmpty()) {
                }
                OutputStream out = s.getOutputStream();
                out.write(response);
                out.flush();
            }
        }
    }
}
