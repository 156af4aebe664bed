// `tern tokenize`: the token ids of a text as a JSON array (no BOS added).

import ArgumentParser
import Foundation
import TernCore

struct TokenizeCommand: ParsableCommand, EnvironmentReadable {
    static let configuration = CommandConfiguration(commandName: "tokenize", abstract: "Print the token ids of a text as a JSON array.")

    static let environmentOptions: [EnvironmentOption] = [.value("model"), .value("text"), .flag("special")]

    @Option(parsing: .unconditional, help: .tern("GGUF file or Hugging Face directory.", env: "model", valueName: "path"))
    var model = defaultModelPath
    @Option(parsing: .unconditional, help: .tern("The text.", env: "text", default: "the argument, required", valueName: "text"))
    var text: String?
    @Argument(help: "The text, when --text is not given.")
    var textArgument: String?
    @Flag(help: .tern("Parse special-token text such as <|im_start|>.", env: "special", default: "off"))
    var special = false

    func run() throws {
        // The argument is always from the command line, --text may be from TERN_TEXT: the argument wins.
        guard let text = textArgument ?? text else { throw UsageError("tokenize needs --text TEXT") }
        let ck = try Checkpoint.open(path: model)
        let tokenizer = try Tokenizer(spec: ck.tokenizerSpec)
        let ids = tokenizer.encode(text, parseSpecial: special)
        print("[" + ids.map(String.init).joined(separator: ", ") + "]")
    }
}
