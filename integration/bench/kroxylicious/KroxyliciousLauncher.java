// Starts a Kroxylicious proxy from a YAML config, as io.kroxylicious.app.Kroxylicious does
// (parse the config, build KafkaProxy with the default features, start, block), without the
// app module's command line. Run as a single-file source program:
//   java -cp '<kroxylicious-runtime jars>/*' KroxyliciousLauncher.java proxy-config.yaml
import java.nio.file.Files;
import java.nio.file.Path;

import io.kroxylicious.proxy.KafkaProxy;
import io.kroxylicious.proxy.config.ConfigParser;
import io.kroxylicious.proxy.config.Configuration;
import io.kroxylicious.proxy.internal.config.Features;

public class KroxyliciousLauncher {
    public static void main(String[] args) throws Exception {
        ConfigParser parser = new ConfigParser();
        Configuration config = parser.parseConfiguration(Files.readString(Path.of(args[0])));
        KafkaProxy proxy = new KafkaProxy(parser, config, Features.defaultFeatures());
        Runtime.getRuntime().addShutdownHook(new Thread(proxy::shutdown, "shutdown"));
        proxy.startup();
        System.out.println("kroxylicious started");
        proxy.block();
    }
}
