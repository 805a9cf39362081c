<?php
/**
 * yptask publisher helpers for PHP: cast and call over the node's JSON-RPC API.
 *
 *     require 'yptask.php';
 *     $id = yptask_cast('upai.photos.upload', ['photo_id' => 7]);
 *     $answer = yptask_call('upai.echo', ['hello' => 'world'], 5);
 *
 * Load it once (require_once). The node's URL comes from the YPTASK_URL constant if defined, else the
 * YPTASK_URL environment variable, else http://127.0.0.1:8700/rpc. Requests go
 * through PHP streams (file_get_contents with a stream context), so the curl
 * extension is not needed; the json extension is (it is built in since PHP 8).
 * Every failure throws a YPTaskException carrying the JSON-RPC error code
 * (getCode(); 0 when the node could not be reached) and data (getData()).
 * PHP 8.2 compatible.
 */

declare(strict_types=1);

if (!class_exists('YPTaskException', false)) {
    /** Thrown when a cast or call fails; getCode() is the JSON-RPC error code. */
    class YPTaskException extends RuntimeException
    {
        private mixed $data;

        /** $data is the error's "data" member, decoded as arrays. */
        public function __construct(string $message, int $code = 0, mixed $data = null)
        {
            parent::__construct($message, $code);
            $this->data = $data;
        }

        /** The error's data, e.g. ['error_class' => ..., 'detail' => ..., 'backtrace' => [...]]. */
        public function getData(): mixed
        {
            return $this->data;
        }

        /** The error class the node reported ('NoSubscriber', or a handler's 'ValueError'), or ''. */
        public function getErrorClass(): string
        {
            return is_array($this->data) && isset($this->data['error_class'])
                ? (string) $this->data['error_class'] : '';
        }
    }
}

/** The node's JSON-RPC URL: the YPTASK_URL constant, else $YPTASK_URL, else the default. */
function yptask_url(): string
{
    if (defined('YPTASK_URL')) {
        return (string) constant('YPTASK_URL');
    }
    $env = getenv('YPTASK_URL');
    return ($env !== false && $env !== '') ? $env : 'http://127.0.0.1:8700/rpc';
}

/**
 * Publish $msg under $name; return the message id once the node has stored it.
 *
 * $options: 'id' (your own id, to make a retry a no-op), 'priority' (int),
 * 'timeout' (seconds to wait for the node, default 10), 'url'.
 */
function yptask_cast(string $name, mixed $msg, array $options = []): string
{
    $params = ['name' => $name, 'msg' => yptask_payload($msg)];
    if (isset($options['id'])) {
        $params['id'] = (string) $options['id'];
    }
    if (isset($options['priority'])) {
        $params['priority'] = (int) $options['priority'];
    }
    $result = yptask_request('cast', $params, (float) ($options['timeout'] ?? 10),
                             isset($options['url']) ? (string) $options['url'] : null);
    if (!is_array($result) || !isset($result['id'])) {
        throw new YPTaskException('yptask: cast answered without a message id');
    }
    return (string) $result['id'];
}

/** Have one worker handle $msg and return its result; wait at most $timeout seconds. */
function yptask_call(string $name, mixed $msg, int|float $timeout = 30): mixed
{
    $params = ['name' => $name, 'msg' => yptask_payload($msg), 'timeout' => $timeout];
    return yptask_request('call', $params, $timeout + 10.0);
}

/** A payload of [] means "no fields": send it as {} rather than as an empty list. */
function yptask_payload(mixed $msg): mixed
{
    return $msg === [] ? new stdClass() : $msg;
}

/** Send one JSON-RPC request to the node and return its result, or throw YPTaskException. */
function yptask_request(string $method, array $params, float $timeout,
                        ?string $url = null): mixed
{
    static $next_id = 0;
    $url = $url ?? yptask_url();
    $id = ++$next_id;
    try {
        $body = json_encode(['jsonrpc' => '2.0', 'method' => $method, 'params' => $params,
                             'id' => $id],
                            JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION);
    } catch (JsonException $e) {
        throw new YPTaskException("yptask: cannot send $method: its message is not JSON ("
                                  . $e->getMessage() . ')');
    }
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => "Content-Type: application/json\r\nAccept: application/json\r\n",
        'content' => $body,
        'timeout' => $timeout,
        'ignore_errors' => true,  // read the JSON-RPC body of a 413 too
    ]]);
    $problem = null;
    set_error_handler(function (int $no, string $text) use (&$problem): bool {
        $problem = $text;
        return true;
    });
    try {
        $raw = file_get_contents($url, false, $context);
    } finally {
        restore_error_handler();
    }
    if ($raw === false) {
        throw new YPTaskException("yptask: cannot reach the node at $url: "
                                  . ($problem ?? 'no answer')
                                  . '; check that `yptask node` runs there, or set YPTASK_URL');
    }
    $status = 0;
    $headers = $http_response_header ?? [];
    if (isset($headers[0]) && preg_match('#^HTTP/\S+\s+(\d{3})#', $headers[0], $m)) {
        $status = (int) $m[1];
    }
    try {
        $answer = json_decode($raw, true, 512, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
    } catch (JsonException $e) {
        throw new YPTaskException("yptask: the node at $url answered HTTP $status without "
                                  . 'JSON-RPC; check that YPTASK_URL ends in /rpc');
    }
    if (!is_array($answer) || ($answer['jsonrpc'] ?? null) !== '2.0') {
        throw new YPTaskException("yptask: the node at $url did not answer JSON-RPC 2.0");
    }
    if (isset($answer['error']) && is_array($answer['error'])) {
        $error = $answer['error'];
        throw new YPTaskException((string) ($error['message'] ?? 'unknown error'),
                                  (int) ($error['code'] ?? 0), $error['data'] ?? null);
    }
    if (!array_key_exists('result', $answer) || ($answer['id'] ?? null) !== $id) {
        throw new YPTaskException("yptask: the node at $url answered without a result for $method");
    }
    return $answer['result'];
}
