#!/usr/bin/env escript
%% -*- erlang -*-
%%! -noshell -noinput
%%
%% term_oracle: real Erlang as the oracle for yptask.codec (tests/test_codec_erlang.py).
%%
%% One long-running process per test module. Requests and answers are
%% {packet, 4} frames on stdin/stdout; the first byte of a request is the op:
%%
%%   "e" OptsLen:32 OptsSrc Src    eval: parse and evaluate the Erlang source Src
%%                                 (an expression, no trailing dot) and the list of
%%                                 term_to_binary options OptsSrc (e.g. "[compressed]").
%%       -> 0 term_to_binary(Term, Opts)
%%       -> 1 Error                (Src or OptsSrc did not parse or evaluate)
%%
%%   "c" BinLen:32 Bin Src         check: is binary_to_term(Bin) =:= the term of Src?
%%       -> 0 term_to_binary(Decoded, [{minor_version, 2}])    equal
%%       -> 1 Printed              not equal: the decoded term, printed with ~tp
%%       -> 2 Error                binary_to_term raised (badarg) or left bytes over
%%       -> 3 Error                Src did not parse or evaluate
%%
%% Sources are UTF-8. Everything is evaluated in this one process, so the
%% process dictionary carries a value from one request to the next (a
%% make_ref() put there by an eval can be compared by a later check).
%% End of input: exit 0. Nothing but frames is ever written to stdout: the
%% logger is moved to stderr.

main(_) ->
    ok = logger:remove_handler(default),
    ok = logger:add_handler(default, logger_std_h, #{config => #{type => standard_error}}),
    Port = open_port({fd, 0, 1}, [{packet, 4}, binary, eof]),
    loop(Port).

loop(Port) ->
    receive
        {Port, {data, Request}} ->
            port_command(Port, serve(Request)),
            loop(Port);
        {Port, eof} ->
            halt(0)
    end.

serve(<<"e", OptsLen:32, OptsSrc:OptsLen/binary, Src/binary>>) ->
    try
        Opts = eval(OptsSrc),
        Term = eval(Src),
        <<0, (term_to_binary(Term, Opts))/binary>>
    catch
        Class:Reason -> <<1, (format_error(Class, Reason))/binary>>
    end;
serve(<<"c", BinLen:32, Bin:BinLen/binary, Src/binary>>) ->
    case decode(Bin) of
        {ok, Decoded} ->
            try eval(Src) of
                Expected when Decoded =:= Expected ->
                    <<0, (term_to_binary(Decoded, [{minor_version, 2}]))/binary>>;
                _ ->
                    <<1, (unicode:characters_to_binary(io_lib:format("~tp", [Decoded])))/binary>>
            catch
                Class:Reason -> <<3, (format_error(Class, Reason))/binary>>
            end;
        {error, Why} ->
            <<2, Why/binary>>
    end;
serve(Other) ->
    <<1, (unicode:characters_to_binary(
            io_lib:format("unknown request ~P", [Other, 10])))/binary>>.

decode(Bin) ->
    try binary_to_term(Bin, [used]) of
        {Term, Used} when Used =:= byte_size(Bin) ->
            {ok, Term};
        {_, Used} ->
            {error, unicode:characters_to_binary(
                      io_lib:format("~B bytes left over after the term",
                                    [byte_size(Bin) - Used]))}
    catch
        Class:Reason -> {error, format_error(Class, Reason)}
    end.

eval(Src) ->
    Text = unicode:characters_to_list(Src, utf8),
    {ok, Tokens, _} = erl_scan:string(Text ++ "."),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    {value, Value, _} = erl_eval:exprs(Exprs, erl_eval:new_bindings()),
    Value.

format_error(Class, Reason) ->
    unicode:characters_to_binary(io_lib:format("~p:~tp", [Class, Reason])).
